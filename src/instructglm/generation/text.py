"""From generated token ids to the answer's text, piece by piece, ending where the answer ends.

Three layers, one per concern, used alike by ``infer`` (whole answers), ``chat`` (streamed to the
terminal) and ``serve`` (streamed to clients):

* :class:`Detokenizer`: ids -> new text, never half a character. Only a short window of recent
  ids is decoded per token (the text of ``ids[a:]`` minus the kept text of ``ids[a:b]``), so the
  cost stays flat however long the answer gets, and a byte-level token that holds part of a
  multi-byte (Chinese) character is held back until the character is complete.
* :class:`StopText`: new text -> what may be shown. It cuts the answer at the first stop string
  (the template's turn markers, a request's ``stop``), holds back a tail that may still become
  one, and for chat answers drops surrounding whitespace.
* :class:`TextStream`: one answer: both of the above plus EOS and the token budget.

Pieces are only ever appended, so what was streamed always adds up to the final answer.
"""

from __future__ import annotations

from typing import Callable

REPLACEMENT = "\ufffd"  # what decoding shows for the bytes of an incomplete UTF-8 character


class Detokenizer:
    """``push`` ids one at a time, get the text each completes.

    Each new piece is ``decode(ids[start:])`` minus the text of ``ids[start:shown]``, decoded with
    the same context so that what depends on a neighbour (a word's leading space in SentencePiece,
    a byte sequence) is the same as in one decode of everything. ``start`` stays put while the
    window is short, so the text of ``ids[start:shown]`` is the previous call's decode (kept, not
    decoded again): about one decode of at most ``WINDOW`` ids per token, flat however long the
    answer gets.
    """

    WINDOW = 16  # ids decoded per token at most, before the window's start moves up

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.start = 0  # the window: ids[start:] are decoded for each new piece
        self.shown = 0  # ids up to here have been turned into text
        self.before = ""  # the text of ids[start:shown]
        self._backend = _rust_decoder(tokenizer)

    def _decode(self, ids: list[int]) -> str:
        if self._backend is not None:
            return self._backend.decode(ids, skip_special_tokens=True)
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        """The text that ``token`` completes ("" while a character is still incomplete)."""
        self.ids.append(token)
        return self._advance(final=False)

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character shows as U+FFFD, as a full decode would)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        text = self._decode(self.ids[self.start:])
        if len(text) <= len(self.before) or (text.endswith(REPLACEMENT) and not final):
            return ""
        piece = text[len(self.before):]
        if len(self.ids) - self.start > self.WINDOW:  # move the window up to the last piece's first id
            self.start = self.shown
            text = self._decode(self.ids[self.start:])
        self.shown, self.before = len(self.ids), text
        return piece


def _rust_decoder(tokenizer):
    """The Rust tokenizer whose ``decode`` is exactly what ``tokenizer.decode`` returns, or None.

    A fast tokenizer's ``decode`` runs the Rust decode under a dozen Python layers per call (14% of
    the tiny test model's 64-row decode loop under cProfile, the Rust decode itself 1%); they add
    nothing when the tokenizer's class keeps the stock ``decode`` and the clean-up of tokenization
    spaces is off.
    """
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    cls = type(tokenizer)
    stock = (isinstance(tokenizer, TokenizersBackend) and cls.decode is TokenizersBackend.decode
             and cls._decode is TokenizersBackend._decode)
    if not stock or getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return None
    return tokenizer.backend_tokenizer


class StopText:
    """Decides which part of the growing answer can be shown: nothing from a stop string on, never
    a tail that may still become a stop string, and with ``strip`` no surrounding whitespace.

    Each piece costs time for the piece and the stop strings only, never for the answer so far:
    stop strings are searched for where the new piece could complete one, and what is shown is
    tracked as an end index into the answer.
    """

    def __init__(self, stops=(), strip: bool = False):
        self.stops = tuple(s for s in stops if s)
        self.reach = max((len(s) for s in self.stops), default=1) - 1  # a stop may start this far back
        self.strip = strip
        self.body = ""  # everything received (with ``strip``, from the first non-blank character)
        self.shown = 0  # length of the answer shown so far
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The part of the answer that can be shown now that ``piece`` has arrived."""
        if self.stopped:
            return ""
        if self.strip and not self.body:
            piece = piece.lstrip()
        before = len(self.body)
        self.body += piece
        body, since = self.body, max(0, before - self.reach)
        hits = [at for at in (body.find(s, since) for s in self.stops) if at >= 0]
        if hits:
            self.stopped = True
            return self._show(min(hits))
        end = len(body)
        for s in self.stops:  # the tail could be the beginning of a stop string: one that starts with s[0]
            at = body.find(s[0], max(0, end - len(s) + 1), end)
            while at >= 0 and not s.startswith(body[at:end]):
                at = body.find(s[0], at + 1, end)
            if at >= 0:  # the earliest such start: the longest tail held back
                end = at
        return self._show(end)

    def finish(self) -> str:
        """The rest of the answer once nothing more will come."""
        if self.stopped:
            return ""
        self.stopped = True
        return self._show(len(self.body))

    def _show(self, end: int) -> str:
        body = self.body
        if self.strip:  # whitespace is shown only once text follows it
            while end > self.shown and body[end - 1].isspace():
                end -= 1
        if end <= self.shown:
            return ""
        out = body[self.shown:end]
        self.shown = end
        return out

    @property
    def answer(self) -> str:
        return self.body[:self.shown]


class TextStream:
    """One answer being generated: ``push`` each token; ``on_text`` gets each newly visible piece.

    ``reason`` is set once it is over: ``"stop"`` (EOS or a stop string) or ``"length"``
    (``max_tokens`` generated, or :meth:`finish` called when the generator ran out).
    """

    def __init__(self, tokenizer, stops=(), strip: bool = False, eos: int | None = None,
                 max_tokens: int | None = None, on_text: Callable[[str], None] | None = None):
        self.detokenizer = Detokenizer(tokenizer)
        self.stop = StopText(stops, strip)
        self.eos, self.max_tokens = eos, max_tokens
        self.on_text = on_text
        self.tokens = 0  # generated tokens of the answer (a closing EOS is not counted)
        self.reason: str | None = None

    @property
    def done(self) -> bool:
        return self.reason is not None

    @property
    def text(self) -> str:
        return self.stop.answer

    def push(self, token: int) -> None:
        if self.done:
            return
        if token == self.eos:
            self._end("stop")
            return
        self.tokens += 1
        self._emit(self.stop.feed(self.detokenizer.push(token)))
        if self.stop.stopped:
            self.reason = "stop"
        elif self.max_tokens is not None and self.tokens >= self.max_tokens:
            self._end("length")

    def finish(self, reason: str = "length") -> None:
        """End the answer now (the generator stopped), showing whatever was held back."""
        if not self.done:
            self._end(reason)

    def cancel(self) -> None:
        """End the answer without showing anything more (nobody is listening)."""
        if not self.done:
            self.reason = "cancelled"

    def _end(self, reason: str) -> None:
        self._emit(self.stop.feed(self.detokenizer.flush()) + self.stop.finish())
        self.reason = reason

    def _emit(self, piece: str) -> None:
        if piece and self.on_text is not None:
            self.on_text(piece)
