"""Prompt templates: one piece of code renders a conversation for training, inference and serving.

A template turns canonical messages into :class:`Segment` s: pieces of text that are either
prompt (masked with -100 in the labels) or an assistant response (trained). Tokenization encodes
each segment on its own and concatenates the ids, so the trained span is exactly the assistant
text + its closing, whatever the tokenizer does at segment boundaries. Generation uses
:meth:`Template.prompt`, the same rendering up to the start of the next response.

Where the end of a response goes
--------------------------------
A trained segment with ``eos=True`` is followed by the tokenizer's EOS token, trained too. A
trained segment with ``eos=False`` is followed either by nothing or by another trained segment
that closes the response (a chat template's end-of-turn text such as ``<end_of_turn>``); such a
closing segment is kept whole when a row is truncated. Every row therefore ends with the
closing of its last response, and the text between turns (blank lines, the next round marker)
belongs to the *next* prompt segment and is masked.

Builtin templates
-----------------
``alpaca``
    ``### Instruction:\\n…\\n\\n### Input:\\n…\\n\\n### Response:\\n`` + response + EOS. Several turns
    follow each other directly after the EOS.
``chatglm``
    ChatGLM-6B's own multi-round format (the ChatGLM2-6B ``build_prompt``, rounds from 1)::

        [Round 1]\\n\\n问：{q1}\\n\\n答：{a1}<EOS>\\n\\n[Round 2]\\n\\n问：{q2}\\n\\n答：{a2}<EOS>

    EOS comes right after each answer, before the blank line that separates rounds, so the model
    learns to stop as soon as it has answered; the blank line is masked with the next round. A
    system message is written first, followed by a blank line.
``model``
    The tokenizer's own chat template (``tokenizer.apply_chat_template``). Segments are found by
    rendering prefixes of the conversation and diffing: for each assistant turn the prompt is
    what the generation prompt adds, the trained span is the assistant content plus the template's
    end-of-turn text (e.g. ``<end_of_turn>``, ``<|im_end|>``; trailing whitespace after it is
    masked). A template that closes turns with nothing gets the tokenizer's EOS instead. A
    leading BOS rendered by the template is dropped when the tokenizer adds one itself.

File templates (``--template path/to/file.yaml`` or ``.json``)
-------------------------------------------------------------
A mapping with these keys (all strings unless said otherwise)::

    user: "<|user|>\\n{content}\\n"        # required: one user turn; {content} = the user text,
                                          # {round} = the 1-based round number
    assistant_prefix: "<|assistant|>\\n"  # opens every response (masked, part of the prompt)
    assistant_suffix: ""                  # closes every response, trained (e.g. "<|im_end|>")
    eos: true                             # (bool) append the tokenizer's EOS after the suffix, trained
    turn_separator: "\\n"                  # masked text between a response and the next turn
    system: "{content}\\n\\n"               # how a system message is written (first, masked)
    prefix: ""                            # masked text at the very start of every conversation
    stop: ["<|user|>"]                    # (list) generation is cut at the first of these

``eos: false`` needs a non-empty ``assistant_suffix`` (a response must end somewhere). Unknown
keys are refused. ``{content}`` and ``{round}`` are replaced literally, so other braces are fine.
The template's identity is ``PATH#sha256=HASH`` (absolute path + first 16 hex digits of the
content hash): it is stored in the tokenized dataset's manifest and in the adapter's run info,
and :func:`get_template` refuses that identity when the file has changed since.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from instructglm.errors import UserError
from instructglm.record import Conversation, Message, as_messages


@dataclass(frozen=True)
class Segment:
    text: str
    train: bool  # an assistant response (or its closing): trained
    eos: bool = True  # for a trained segment: followed by the tokenizer's EOS (trained)


class Template:
    name: str = ""
    stop: tuple[str, ...] = ()  # text that opens a new turn: generation is cut there
    opening: str = ""  # text that ends every prompt right before a response (kept on truncation)

    def cut(self, text: str) -> str:
        """A generated answer up to the first turn marker, without surrounding whitespace."""
        for marker in self.stop:
            at = text.find(marker) if marker else -1
            if at >= 0:
                text = text[:at]
        return text.strip()

    def render(self, messages: list[Message] | list[dict]) -> list[Segment]:
        """All segments of a conversation (messages as :class:`Message` or their JSON dicts)."""
        return self.segments(as_messages(messages))

    def segments(self, messages: list[Message]) -> list[Segment]:
        """What :meth:`render` returns, for a list of :class:`Message`; each template defines it."""
        raise NotImplementedError

    def prompt(self, messages: list[Message] | list[dict]) -> list[Segment]:
        """The segments to generate from: every turn (a trailing assistant turn is dropped) up to
        the opening of the next response. Earlier responses stay trained segments so that their
        EOS is encoded exactly as in training."""
        return self.segments(Conversation(as_messages(messages)).prompt)

    def manifest(self) -> dict:
        """What identifies this template in a tokenized dataset's manifest."""
        return {"template": self.name}


class TurnTemplate(Template):
    """Templates that put a system message first (blank line after it), render each user turn with
    :meth:`user_text` and then train on the assistant's answer + EOS."""

    def user_text(self, m: Message, round_no: int) -> str:
        raise NotImplementedError

    def segments(self, messages: list[Message]) -> list[Segment]:
        segments: list[Segment] = []
        pending, round_no = "", 0
        for m in messages:
            if m.role == "system":
                pending += m.content + "\n\n"
            elif m.role == "user":
                round_no += 1
                pending += self.user_text(m, round_no)
            else:
                segments.append(Segment(pending, False))
                segments.append(Segment(m.content, True))
                pending = ""
        if pending:
            segments.append(Segment(pending, False))
        return segments


class AlpacaTemplate(TurnTemplate):
    """Alpaca's format: ``### Instruction:\\n…\\n\\n### Input:\\n…\\n\\n### Response:\\n`` (no Input
    block when the input is empty). A system message, if any, comes first followed by a blank line."""

    name = "alpaca"
    stop = ("### Instruction:", "### Input:", "### Response:")
    opening = "### Response:\n"

    def user_text(self, m: Message, round_no: int) -> str:
        if m.input:
            return f"### Instruction:\n{m.instruction or ''}\n\n### Input:\n{m.input}\n\n### Response:\n"
        return f"### Instruction:\n{m.content}\n\n### Response:\n"


class ChatGLMTemplate(TurnTemplate):
    """``[Round n]\\n\\n问：…\\n\\n答：`` + answer + EOS, rounds from 1, a blank line between rounds."""

    name = "chatglm"
    stop = ("[Round ", "\n问：")
    opening = "\n\n答："

    def user_text(self, m: Message, round_no: int) -> str:
        return ("\n\n" if round_no > 1 else "") + f"[Round {round_no}]\n\n问：{m.content}\n\n答："


_FILE_KEYS = {"name", "system", "user", "assistant_prefix", "assistant_suffix", "turn_separator", "stop",
              "eos", "prefix"}


class FileTemplate(Template):
    """A template described by a small YAML/JSON file (schema in the module docstring)."""

    def __init__(self, path: str | Path, spec: dict, digest: str):
        self.path = str(Path(path).resolve())
        self.digest = digest
        self.name = f"{self.path}#sha256={digest}"
        self.user = spec["user"]
        self.system = spec.get("system", "{content}\n\n")
        self.prefix = spec.get("prefix", "")
        self.opening = spec.get("assistant_prefix", "")
        self.suffix = spec.get("assistant_suffix", "")
        self.separator = spec.get("turn_separator", "")
        self.eos = spec.get("eos", True)
        self.stop = tuple(spec.get("stop", ()))

    def segments(self, messages: list[Message]) -> list[Segment]:
        segments: list[Segment] = []
        pending, rnd = self.prefix, 0
        for m in messages:
            if m.role == "system":
                pending += self.system.replace("{content}", m.content)
            elif m.role == "user":
                rnd += 1
                if rnd > 1:
                    pending += self.separator
                pending += self.user.replace("{round}", str(rnd)).replace("{content}", m.content)
                pending += self.opening
            else:
                segments.append(Segment(pending, False))
                if self.suffix:
                    segments.append(Segment(m.content, True, eos=False))
                    segments.append(Segment(self.suffix, True, eos=self.eos))
                else:
                    segments.append(Segment(m.content, True))
                pending = ""
        if pending:
            segments.append(Segment(pending, False))
        return segments

    def manifest(self) -> dict:
        return {"template": self.name, "template_file": self.path, "template_sha256": self.digest}


def load_template_file(path: str | Path, expect_digest: str | None = None) -> FileTemplate:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--template {path}: template file not found")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()[:16]
    if expect_digest and digest != expect_digest:
        raise UserError(f"{path}: the template file changed since the data was tokenized with it "
                        f"(sha256 {digest}, expected {expect_digest}); tokenize and train again, or restore it")
    try:
        text = raw.decode("utf-8-sig")
        spec = json.loads(text) if path.suffix.lower() == ".json" else _yaml(text)
    except (UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: not a valid template file: {e}") from None
    if not isinstance(spec, dict):
        raise UserError(f"{path}: a template file must be a mapping (keys: {', '.join(sorted(_FILE_KEYS))})")
    for key, value in spec.items():
        if key not in _FILE_KEYS:
            raise UserError(f"{path}: unknown template key '{key}' (known: {', '.join(sorted(_FILE_KEYS))})")
        if key == "eos":
            if not isinstance(value, bool):
                raise UserError(f"{path}: key 'eos' must be true or false, got {value!r}")
        elif key == "stop":
            if isinstance(value, str):
                spec["stop"] = [value]
            elif not (isinstance(value, list) and all(isinstance(v, str) and v for v in value)):
                raise UserError(f"{path}: key 'stop' must be a list of non-empty strings")
        elif not isinstance(value, str):
            raise UserError(f"{path}: key '{key}' must be a string, got {type(value).__name__}")
    if "user" not in spec:
        raise UserError(f"{path}: missing key 'user' (e.g. user: \"<|user|>\\n{{content}}\\n\")")
    if "{content}" not in spec["user"]:
        raise UserError(f"{path}: key 'user' must contain {{content}}")
    if not spec.get("eos", True) and not spec.get("assistant_suffix"):
        raise UserError(f"{path}: with eos: false, 'assistant_suffix' must say where a response ends")
    return FileTemplate(path, spec, digest)


def _yaml(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ValueError(f"line {mark.line + 1}: {getattr(e, 'problem', e)}" if mark else str(e)) from None


class ModelTemplate(Template):
    """The tokenizer's own chat template, split into segments by rendering prefixes and diffing.

    ``tokenizer`` may also be a model spec (str): the tokenizer is then loaded on first use.
    """

    name = "model"

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._ready = False

    @property
    def tokenizer(self):
        if isinstance(self._tokenizer, str):
            from instructglm.models.loading import load_tokenizer, resolve_model

            self._tokenizer = load_tokenizer(resolve_model(self._tokenizer))
        return self._tokenizer

    def _setup(self) -> None:
        if self._ready:
            return
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise UserError(f"--template model: the tokenizer of {getattr(tok, 'name_or_path', '') or 'this model'} "
                            f"has no chat template; use --template alpaca, chatglm or a template file")
        bos = tok.bos_token
        probe = tok("a").input_ids
        self._drop_bos = bos if bos and probe and probe[0] == tok.bos_token_id else ""
        u, a = Message("user", "\x00Q\x00"), Message("assistant", "\x00A\x00")
        r = Message("user", "\x00R\x00")
        gen = self._render([u], True)
        self.opening = gen[gen.index("\x00Q\x00") + 3:] if "\x00Q\x00" in gen else ""
        one = self._render([u, a], False)
        end_of_turn = one[one.index("\x00A\x00") + 3:].strip() if "\x00A\x00" in one else ""
        try:
            two = self._render([u, a, r], False)
            user_open = two[len(one):two.index("\x00R\x00")].strip() if two.startswith(one) else ""
        except UserError:
            user_open = ""
        self.stop = tuple(s for s in (end_of_turn, user_open) if s)
        self._ready = True

    def _render(self, messages: list[Message], generation: bool) -> str:
        msgs = [{"role": m.role, "content": m.content} for m in messages]
        try:
            text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation)
        except UserError:
            raise
        except Exception as e:  # jinja raises its own errors (e.g. "roles must alternate")
            raise UserError(f"--template model: the chat template failed: {str(e).splitlines()[0]}") from None
        if isinstance(text, list):
            text = text[0]
        if self._drop_bos and text.startswith(self._drop_bos):
            text = text[len(self._drop_bos):]
        return text

    def cut(self, text: str) -> str:
        self._setup()
        return super().cut(text)

    def segments(self, messages: list[Message]) -> list[Segment]:
        self._setup()
        segments: list[Segment] = []
        done = ""  # the rendered text covered by segments so far
        for k, m in enumerate(messages):
            if m.role != "assistant":
                continue
            gen = self._render(messages[:k], True)
            full = self._render(messages[:k + 1], False)
            if not gen.startswith(done) or not full.startswith(gen):
                raise UserError("--template model: the chat template does not render a conversation as a "
                                "prefix of its continuation (it rewrites earlier turns); use another template")
            segments.append(Segment(gen[len(done):], False))
            after = full[len(gen):]
            content = m.content
            if not after.startswith(content):
                content = content.strip()
                if not after.startswith(content):
                    raise UserError("--template model: the chat template changes the assistant text; "
                                    "cannot tell which tokens to train")
            close = after[len(content):]
            closing = close.rstrip()
            if closing:
                segments.append(Segment(content, True, eos=False))
                segments.append(Segment(closing, True, eos=False))
            else:
                segments.append(Segment(content, True))
            done = full[:len(full) - (len(close) - len(closing))]
        if not messages or messages[-1].role != "assistant":
            gen = self._render(messages, True)
            if not gen.startswith(done):
                raise UserError("--template model: the chat template does not render a conversation as a "
                                "prefix of its continuation (it rewrites earlier turns); use another template")
            if gen[len(done):]:
                segments.append(Segment(gen[len(done):], False))
        return segments

    def manifest(self) -> dict:
        self._setup()
        digest = hashlib.sha256(self.tokenizer.chat_template.encode()).hexdigest()[:16]
        return {"template": self.name, "template_sha256": digest}


TEMPLATES: dict[str, Template] = {t.name: t for t in (AlpacaTemplate(), ChatGLMTemplate())}
BUILTIN = (*TEMPLATES, "model")
_PINNED = re.compile(r"^(?P<path>.+)#sha256=(?P<digest>[0-9a-f]{16})$")


def get_template(name: str, tokenizer=None) -> Template:
    """The template called ``name``: a builtin name, ``model`` (needs ``tokenizer``: a tokenizer or a
    model spec to load it from), a template file path, or a stored identity ``PATH#sha256=HASH``."""
    if name in TEMPLATES:
        return TEMPLATES[name]
    if name == "model":
        if tokenizer is None:
            raise UserError("--template model: needs the model's tokenizer")
        return ModelTemplate(tokenizer)
    pinned = _PINNED.match(name)
    if pinned:
        return load_template_file(pinned["path"], pinned["digest"])
    if name.lower().endswith((".yaml", ".yml", ".json")) or Path(name).is_file():
        return load_template_file(name)
    raise UserError(f"--template {name}: unknown template; known: {', '.join(BUILTIN)}, or a .yaml/.json "
                    f"template file")
