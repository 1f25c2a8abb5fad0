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
``chatglm-6b``, ``chatglm2``, ``chatglm3``, ``glm4``
    The ChatGLM families' own formats, ids equal to the official ``chat()`` (see their classes and
    tests/models/test_chatglm_templates.py). ``auto`` picks one from the model's tokenizer.
``model``
    The tokenizer's own chat template (``tokenizer.apply_chat_template``). Segments are found by
    rendering prefixes of the conversation and diffing: for each assistant turn the prompt is
    what the generation prompt adds, the trained span is the assistant content plus the template's
    end-of-turn text (e.g. ``<end_of_turn>``, ``<|im_end|>``; trailing whitespace after it is
    masked). A template that closes turns with nothing gets the tokenizer's EOS instead. A
    leading BOS rendered by the template is dropped when the tokenizer adds one itself.

File templates (``--template path/to/file.yaml`` or ``.json``)
-------------------------------------------------------------
A small YAML/JSON description of the turns; the schema is in :mod:`instructglm.template_files`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from instructglm.errors import UserError
from instructglm.convert.turns import TOOL_RESULT_TAG as TOOL_RESULT
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


class HistoryPromptTemplate(Template):
    """The ``build_prompt`` families (ChatGLM-6B, ChatGLM2-6B): every earlier round is plain prompt
    text and only the last answer is trained, followed by EOS, exactly as the official ``chat()``
    builds its input and the official P-Tuning v2 scripts build training rows (earlier answers are
    encoded inside the prompt string, never on their own, so their ids match the official ones)."""

    head = ""  # masked text before everything (the model's own prefix tokens)
    tail = ""  # masked text right after the prompt, before the answer
    system_sep = "\n"
    stop = ("[Round ", "\n问：")

    def history_round(self, no: int, query: str, answer: str) -> str:
        raise NotImplementedError

    def last_round(self, no: int, query: str, first: bool) -> str:
        raise NotImplementedError

    def segments(self, messages: list[Message]) -> list[Segment]:
        system = "".join(m.content + self.system_sep for m in messages if m.role == "system")
        turns = [m for m in messages if m.role != "system"]
        answer = turns.pop().content if turns and turns[-1].role == "assistant" else None
        queries = [m.content for m in turns if m.role == "user"]
        answers = [m.content for m in turns if m.role == "assistant"]
        if not queries or len(answers) != len(queries) - 1:
            raise UserError(f"template {self.name}: expects alternating user/assistant turns that start "
                            f"with a user turn")
        history = "".join(self.history_round(i, q, a) for i, (q, a) in enumerate(zip(queries, answers)))
        prompt = self.head + system + history + self.last_round(len(answers), queries[-1], not answers)
        segments = [Segment(prompt + self.tail, False)]
        return segments + ([Segment(answer, True)] if answer is not None else [])


class ChatGLM6BTemplate(HistoryPromptTemplate):
    """ChatGLM-6B (v1)'s ``chat()``: the bare query alone, or with history
    ``[Round 0]\\n问：{q}\\n答：{a}\\n…[Round n]\\n问：{q}\\n答：``; then ``[gMASK]<sop>``, which its
    tokenizer appends after the prompt, and the answer + ``<eop>``."""

    name = "chatglm-6b"
    tail = opening = "[gMASK]<sop>"

    def history_round(self, no: int, query: str, answer: str) -> str:
        return f"[Round {no}]\n问：{query}\n答：{answer}\n"

    def last_round(self, no: int, query: str, first: bool) -> str:
        return query if first else f"[Round {no}]\n问：{query}\n答："


class ChatGLM2Template(HistoryPromptTemplate):
    """ChatGLM2-6B's ``build_prompt`` after its ``[gMASK]<sop>`` prefix: rounds from 1,
    ``[Round n]\\n\\n问：{q}\\n\\n答：{a}`` joined by blank lines; the answer + EOS."""

    name = "chatglm2"
    head = "[gMASK]<sop>"
    system_sep = "\n\n"
    opening = "\n\n答："

    def history_round(self, no: int, query: str, answer: str) -> str:
        return f"[Round {no + 1}]\n\n问：{query}\n\n答：{answer}\n\n"

    def last_round(self, no: int, query: str, first: bool) -> str:
        return f"[Round {no + 1}]\n\n问：{query}\n\n答："


class RoleTokenTemplate(Template):
    """ChatGLM3-6B and GLM-4: ``[gMASK]<sop>`` then ``<|role|>\\n{content}`` per message, the prompt ending
    with ``<|assistant|>``. As in the official fine-tuning scripts an answer is trained together with
    the role token that follows it (``<|user|>`` or ``<|observation|>``: the model's end-of-turn ids).
    A user message that starts with ``[observation]`` (a tool result folded by ``convert``) becomes an
    ``<|observation|>`` turn; ``[function_call]`` answers stay assistant text."""

    stop = ("<|user|>", "<|observation|>")
    opening = "<|assistant|>"
    last_closing = ""  # trained after the last answer; "" means the tokenizer's EOS

    def body(self, content: str) -> str:
        return "\n" + content

    @staticmethod
    def role(m: Message) -> tuple[str, str]:
        """(role, content): a folded tool result is an observation turn."""
        if m.role == "user" and m.content.startswith(TOOL_RESULT + "\n"):
            return "observation", m.content[len(TOOL_RESULT) + 1:]
        return m.role, m.content

    def segments(self, messages: list[Message]) -> list[Segment]:
        segments: list[Segment] = []
        pending, opened = "[gMASK]<sop>", False  # opened: the role token is already in a closing
        for k, m in enumerate(messages):
            role, content = self.role(m)
            head = "" if opened else f"<|{role}|>"
            if role != "assistant":
                pending, opened = pending + head + self.body(content), False
                continue
            segments.append(Segment(pending + head, False))
            pending, nxt = "", messages[k + 1] if k + 1 < len(messages) else None
            if nxt is None and not self.last_closing:
                segments.append(Segment(self.body(content), True))
                continue
            closing = f"<|{self.role(nxt)[0]}|>" if nxt else self.last_closing
            segments += [Segment(self.body(content), True, eos=False), Segment(closing, True, eos=False)]
            opened = nxt is not None
        if pending or not messages or messages[-1].role != "assistant":
            segments.append(Segment(pending + "<|assistant|>", False))
        return segments


class ChatGLM3Template(RoleTokenTemplate):
    """ChatGLM3-6B: each message is encoded on its own by the official code, so sentencepiece puts a
    word-start mark before it; the space after the newline reproduces that mark in one encoded string.
    The last answer ends with EOS (``</s>``), as in its fine-tuning demo."""

    name = "chatglm3"

    def body(self, content: str) -> str:
        return "\n " + content if content else "\n"


class GLM4Template(RoleTokenTemplate):
    """GLM-4-9B-chat: ``<|role|>\\n{content}``; the last answer is closed by ``<|user|>`` (its
    fine-tuning demo's end of conversation), one of the model's end-of-turn ids."""

    name = "glm4"
    last_closing = "<|user|>"


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


TEMPLATES: dict[str, Template] = {t.name: t for t in (
    AlpacaTemplate(), ChatGLMTemplate(), ChatGLM6BTemplate(), ChatGLM2Template(), ChatGLM3Template(), GLM4Template())}
BUILTIN = (*TEMPLATES, "model", "auto")
_PINNED = re.compile(r"^(?P<path>.+)#sha256=(?P<digest>[0-9a-f]{16})$")


def auto_template(tokenizer) -> Template:
    """The model's own template: a ChatGLM family's (told by its tokenizer: the v1 class, or the chat
    template our conversion gave a ChatGLM2/3/GLM-4 tokenizer), else ``model`` when the tokenizer has a
    chat template, else ``alpaca``. ``tokenizer`` may be a model spec (the tokenizer is then loaded)."""
    if isinstance(tokenizer, str):
        from instructglm.models.loading import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    if type(tokenizer).__name__ == "ChatGLMv1Tokenizer":
        return TEMPLATES["chatglm-6b"]
    chat = getattr(tokenizer, "chat_template", None)
    if chat:
        from instructglm.models.chatglm import tokenizers as glm

        family = {glm.CHATGLM2_TEMPLATE: "chatglm2", glm.CHATGLM3_TEMPLATE: "chatglm3", glm.GLM4_TEMPLATE: "glm4"}
        return TEMPLATES[family[chat]] if chat in family else ModelTemplate(tokenizer)
    return TEMPLATES["alpaca"]


def get_template(name: str, tokenizer=None) -> Template:
    """The template called ``name``: a builtin name, ``model`` or ``auto`` (need ``tokenizer``: a
    tokenizer or a model spec to load it from; see :func:`auto_template`), a template file path, or a
    stored identity ``PATH#sha256=HASH``."""
    if name in TEMPLATES:
        return TEMPLATES[name]
    if name in ("model", "auto"):
        if tokenizer is None:
            raise UserError(f"--template {name}: needs the model's tokenizer")
        return ModelTemplate(tokenizer) if name == "model" else auto_template(tokenizer)
    from instructglm.template_files import load_template_file  # (it builds on this module's classes)

    pinned = _PINNED.match(name)
    if pinned:
        return load_template_file(pinned["path"], pinned["digest"])
    if name.lower().endswith((".yaml", ".yml", ".json")) or Path(name).is_file():
        return load_template_file(name)
    raise UserError(f"--template {name}: unknown template; known: {', '.join(BUILTIN)}, or a .yaml/.json "
                    f"template file")
