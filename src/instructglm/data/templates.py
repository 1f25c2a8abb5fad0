"""Prompt templates: one piece of code renders a conversation for training, inference and serving.

A template turns canonical messages into :class:`Segment` s: pieces of text that are either
prompt (masked with -100 in the labels) or an assistant response (trained, followed by EOS).
Tokenization encodes each segment on its own and concatenates the ids, so the trained span is
exactly the assistant text + EOS, whatever the tokenizer does at segment boundaries. Generation
uses :meth:`Template.prompt`, the same rendering up to the start of the next response.
"""

from __future__ import annotations

from dataclasses import dataclass

from instructglm.errors import UserError


@dataclass(frozen=True)
class Segment:
    text: str
    train: bool  # an assistant response: trained, and followed by EOS


class Template:
    name: str = ""
    stop: tuple[str, ...] = ()  # text that opens a new turn: generation is cut there

    def cut(self, text: str) -> str:
        """A generated answer up to the first turn marker, without surrounding whitespace."""
        for marker in self.stop:
            at = text.find(marker)
            if at >= 0:
                text = text[:at]
        return text.strip()

    def render(self, messages: list[dict]) -> list[Segment]:
        """All segments of a conversation that ends with an assistant turn."""
        raise NotImplementedError

    def prompt(self, messages: list[dict]) -> list[Segment]:
        """The segments to generate from: every turn (a trailing assistant turn is dropped) up to
        the opening of the next response. Earlier responses stay trained segments so that their
        EOS is encoded exactly as in training."""
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        return self.render(messages)


class AlpacaTemplate(Template):
    """The seeds' format: ``### Instruction:\\n…\\n\\n### Input:\\n…\\n\\n### Response:\\n`` (no Input
    block when the input is empty). A system message, if any, comes first followed by a blank line."""

    name = "alpaca"
    stop = ("### Instruction:", "### Input:", "### Response:")

    def _user(self, m: dict) -> str:
        if m.get("input"):
            return f"### Instruction:\n{m.get('instruction', '')}\n\n### Input:\n{m['input']}\n\n### Response:\n"
        return f"### Instruction:\n{m['content']}\n\n### Response:\n"

    def render(self, messages: list[dict]) -> list[Segment]:
        segments: list[Segment] = []
        pending = ""
        for m in messages:
            if m["role"] == "system":
                pending += m["content"] + "\n\n"
            elif m["role"] == "user":
                pending += self._user(m)
            else:
                segments.append(Segment(pending, False))
                segments.append(Segment(m["content"], True))
                pending = ""
        if pending:
            segments.append(Segment(pending, False))
        return segments


TEMPLATES: dict[str, Template] = {t.name: t for t in (AlpacaTemplate(),)}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise UserError(f"--template {name}: unknown template; known: {', '.join(TEMPLATES)}") from None
