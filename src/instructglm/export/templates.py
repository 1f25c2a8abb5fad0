"""``export``: serving formats for a trained model.

The training template (:mod:`instructglm.templates`) is the one source of truth for how prompts look;
this module writes it out in the two template languages servers understand:

* :func:`chat_template` — a Jinja chat template for the Hugging Face tokenizer (and the GGUF
  ``tokenizer.chat_template`` key), so that ``tokenizer.apply_chat_template(messages,
  add_generation_prompt=True, tokenize=False)`` gives exactly the text :meth:`Template.prompt`
  renders (earlier answers followed by their closing and EOS, as training encodes them),
* :func:`ollama_template` — a Go template for an Ollama ``Modelfile``.

``alpaca``, ``chatglm`` and template files are translated; ``model`` (the tokenizer's own chat
template) is kept as it is; the ChatGLM family templates (``chatglm2``, ``chatglm3``, ``glm4``) are the
chat templates of the converted tokenizers, which reproduce the official prompt ids. Their Ollama
forms: ``chatglm2`` as its rounds (numbered 1, as for ``chatglm``), ``chatglm3``/``glm4`` as
``<|role|>`` + body per message with Ollama's ``tool`` role as ``<|observation|>``. The GGUF writer
itself lives in :mod:`instructglm.export.gguf`.
"""

from __future__ import annotations

import json
import logging
import re

from instructglm.errors import UserError

log = logging.getLogger(__name__)

# The alpaca template in Jinja. A user turn that came from Alpaca's instruction + input keeps both
# keys (instructglm.record.Message) and gets the Input block; any other user turn renders its content. Every
# assistant turn is followed by EOS, as in training. The generation prompt is already part of the
# user turn ("### Response:\n"), so add_generation_prompt adds nothing.
_ALPACA_JINJA = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{%- if message['input'] is defined and message['input'] -%}"
    "{{ '### Instruction:\\n' + (message['instruction'] if message['instruction'] is defined else '') "
    "+ '\\n\\n### Input:\\n' + message['input'] + '\\n\\n### Response:\\n' }}"
    "{%- else -%}"
    "{{ '### Instruction:\\n' + message['content'] + '\\n\\n### Response:\\n' }}"
    "{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ message['content'] + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def _resolve(template, tokenizer=None):
    from instructglm.templates import Template, get_template

    return template if isinstance(template, Template) else get_template(template, tokenizer)


def _pieces(tpl) -> dict | None:
    """A turn-based template as pieces: prefix, system, user ({round}, {content}), opening (the
    response prefix), separator (between rounds), suffix (closes a response), eos."""
    from instructglm import templates as T
    from instructglm.template_files import FileTemplate

    if isinstance(tpl, T.AlpacaTemplate):  # the plain-chat part; the Input block is Jinja-only
        return {"prefix": "", "system": "{content}\n\n", "user": "### Instruction:\n{content}\n\n",
                "opening": "### Response:\n", "separator": "", "suffix": "", "eos": True}
    if isinstance(tpl, T.ChatGLMTemplate):
        return {"prefix": "", "system": "{content}\n\n", "user": "[Round {round}]\n\n问：{content}",
                "opening": tpl.opening, "separator": "\n\n", "suffix": "", "eos": True}
    if isinstance(tpl, T.ChatGLM2Template):  # earlier answers are prompt text: no EOS after them
        return {"prefix": tpl.head, "system": "{content}" + tpl.system_sep, "user": "[Round {round}]\n\n问：{content}",
                "opening": tpl.opening, "separator": "\n\n", "suffix": "", "eos": False}
    if isinstance(tpl, FileTemplate):
        return {"prefix": tpl.prefix, "system": tpl.system, "user": tpl.user, "opening": tpl.opening,
                "separator": tpl.separator, "suffix": tpl.suffix, "eos": tpl.eos or not tpl.suffix}
    return None


def _jinja_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _jinja_fill(text: str, values: dict[str, str]) -> str:
    """A Jinja expression for ``text`` with ``{name}`` placeholders replaced by expressions."""
    parts = re.split("(" + "|".join(re.escape("{" + k + "}") for k in values) + ")", text)
    exprs = [values[p[1:-1]] if p[1:-1] in values and p.startswith("{") else _jinja_str(p) for p in parts if p]
    return " + ".join(exprs) or "''"


def chat_template(template, tokenizer=None) -> str | None:
    """The Jinja chat template equivalent to the training template ``template`` (a name or a
    :class:`Template`); ``None`` for ``model``, whose template is the tokenizer's own already."""
    from instructglm import templates as T

    tpl = _resolve(template, tokenizer)
    if isinstance(tpl, T.AlpacaTemplate):
        return _ALPACA_JINJA
    if tpl.name == "model" or tpl.name == "chatglm-6b":  # (ChatGLM-6B keeps its official tokenizer files)
        return None
    if isinstance(tpl, (T.ChatGLM2Template, T.RoleTokenTemplate)):
        from instructglm.models.chatglm import tokenizers as glm

        # the chat templates our converted tokenizers carry: they render the official prompt ids
        family = {"chatglm2": glm.CHATGLM2_TEMPLATE, "chatglm3": glm.CHATGLM3_TEMPLATE, "glm4": glm.GLM4_TEMPLATE}
        return family[tpl.name]
    p = _pieces(tpl)
    if p is None:
        raise UserError(f"template '{tpl.name}': no chat template can be written for it")
    content = "message['content']"
    close = _jinja_str(p["suffix"]) + (" + eos_token" if p["eos"] else "")
    return (
        "{%- set ns = namespace(round=0) -%}"
        + (f"{{{{ {_jinja_str(p['prefix'])} }}}}" if p["prefix"] else "")
        + "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}"
        f"{{{{ {_jinja_fill(p['system'], {'content': content})} }}}}"
        "{%- elif message['role'] == 'user' -%}"
        "{%- set ns.round = ns.round + 1 -%}"
        + (f"{{%- if ns.round > 1 -%}}{{{{ {_jinja_str(p['separator'])} }}}}{{%- endif -%}}" if p["separator"] else "")
        + f"{{{{ {_jinja_fill(p['user'], {'content': content, 'round': '(ns.round | string)'})} + "
        f"{_jinja_str(p['opening'])} }}}}"
        "{%- elif message['role'] == 'assistant' -%}"
        f"{{{{ {content} + {close} }}}}"
        "{%- endif -%}"
        "{%- endfor -%}"
    )


def _go_text(s: str) -> str:
    return s if "{{" not in s else "{{ " + json.dumps(s, ensure_ascii=False) + " }}"


def ollama_template(template, eos_token: str, tokenizer=None) -> str | None:
    """The training template in Ollama's Go template syntax (over ``.Messages``), or ``None`` for
    ``model`` (Ollama then uses its own detection of the GGUF's chat template)."""
    from instructglm import templates as T

    tpl = _resolve(template, tokenizer)
    if tpl.name == "model":
        return None
    if isinstance(tpl, T.RoleTokenTemplate):
        return _role_token_go(tpl)
    p = _pieces(tpl)
    if p is None:
        raise UserError(f"template '{tpl.name}': no Ollama template can be written for it")
    if "{round}" in p["user"]:
        log.warning("template '%s' numbers its rounds; Ollama templates cannot count, so the Modelfile "
                    "numbers every round 1 (single-turn prompts are exact)", tpl.name)
    user = "".join("{{ .Content }}" if part == "{content}" else "1" if part == "{round}" else _go_text(part)
                   for part in re.split(r"(\{content\}|\{round\})", p["user"]) if part)
    system = "".join("{{ .Content }}" if part == "{content}" else _go_text(part)
                     for part in re.split(r"(\{content\})", p["system"]) if part)
    close = _go_text(p["suffix"] + ((eos_token or "") if p["eos"] else ""))
    sep = f"{{{{ if $seen }}}}{_go_text(p['separator'])}{{{{ end }}}}" if p["separator"] else ""
    # Ollama's .Messages carry only the content: an Alpaca turn's content is "instruction\n\ninput".
    # No whitespace trimming ({{- ... }}): the literal text is exactly the template's.
    return (_go_text(p["prefix"]) + "{{ $seen := false }}{{ range .Messages }}"
            f"{{{{ if eq .Role \"system\" }}}}{system}"
            f"{{{{ else if eq .Role \"user\" }}}}{sep}{user}{_go_text(p['opening'])}{{{{ $seen = true }}}}"
            f"{{{{ else if eq .Role \"assistant\" }}}}{{{{ .Content }}}}{close}"
            "{{ end }}{{ end }}")


def _role_token_go(tpl) -> str:
    """ChatGLM3 / GLM-4 in Go: ``<|role|>`` and the message body per message (Ollama's ``tool`` role is
    the ``<|observation|>`` turn), then the ``<|assistant|>`` that opens the answer."""
    empty, (before, after) = tpl.body(""), tpl.body("\x00").split("\x00")
    if after or not before.startswith(empty):
        raise UserError(f"template '{tpl.name}': no Ollama template can be written for it")
    # ChatGLM3 writes "\n " before a message's content, only "\n" for an empty one
    extra = before[len(empty):]
    content = "{{ if .Content }}" + extra + "{{ .Content }}{{ end }}" if extra else "{{ .Content }}"
    return ("[gMASK]<sop>{{ range .Messages }}"
            '<|{{ if eq .Role "tool" }}observation{{ else }}{{ .Role }}{{ end }}|>'
            f"{_go_text(empty)}{content}{{{{ end }}}}{_go_text(tpl.opening)}")


def modelfile(gguf_name: str, template, eos_token: str, tokenizer=None) -> str:
    """An Ollama ``Modelfile`` next to the GGUF file: the weights, the prompt format, the stop markers."""
    tpl = _resolve(template, tokenizer)
    tpl.cut("")  # (a 'model' template works out its stop markers on first use)
    go = ollama_template(tpl, eos_token)
    lines = [f"FROM ./{gguf_name}"]
    if go is None:
        lines.append("# TEMPLATE: the model's own chat template (in the GGUF file) is used; Ollama may need "
                     "it written out in Go template syntax")
    else:
        if '"""' in go:
            raise UserError(f"template '{tpl.name}': its Ollama form contains triple quotes")
        lines.append(f'TEMPLATE """{go}"""')
    for stop in dict.fromkeys((*tpl.stop, eos_token or "")):
        if stop:
            lines.append(f"PARAMETER stop {_quote(stop)}")
    return "\n".join(lines) + "\n"


def _quote(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)
