"""``chat``: talk to a model (with or without adapters) in the terminal, tokens shown as they come.

The conversation is rendered with the same template code as training and ``infer`` (earlier turns
included, each past answer closed by EOS exactly as in training), so what the model sees matches
what it was tuned on. The generation engine hands the answer over piece by piece as it is
generated; text that might be the start of the template's next turn marker is held back until it
is clear, and the answer ends at such a marker.

Commands: ``/reset`` (forget the conversation), ``/adapter [NAME]`` (list or switch adapters when
several are loaded; ``base`` switches them off), ``/help``, ``/exit`` (or Ctrl-D). Ctrl-C stops the
answer being generated. Input and output are UTF-8 whatever the locale says.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass

from instructglm.config import opt
from instructglm.generation.sampling import SamplingConfig
from instructglm.record import Message

PROMPT = ">>> "
HELP = ("commands: /reset forgets the conversation, /adapter [NAME] lists or switches adapters "
        "('base' = adapters off), /exit or Ctrl-D quits; Ctrl-C stops an answer")


@dataclass(kw_only=True)
class ChatConfig(SamplingConfig):
    # longer than infer's default: a chat answer is open-ended, not a short reference answer
    max_new_tokens: int = opt(256, help="at most this many tokens per answer", min=1)
    model: str | None = opt(None, help="base model; default: the one the adapter was trained on, else gemma3-270m")
    adapter: list[str] = opt([], help="trained output directory; give NAME=PATH several times to load "
                                      "several adapters and switch with /adapter NAME")
    template: str | None = opt(None, help="prompt template; default: the adapter's, else alpaca")
    system: str | None = opt(None, help="system prompt that opens the conversation")


def _utf8_streams() -> None:
    for stream in (sys.stdin, sys.stdout):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8", errors="replace")


def _line_editing() -> None:
    """Arrow keys and history for ``input()`` on a terminal; only in a UTF-8 locale, where GNU readline
    passes multi-byte (Chinese) input through untouched."""
    import locale

    if not sys.stdin.isatty() or locale.getpreferredencoding(False).lower().replace("-", "") != "utf8":
        return
    try:
        import readline  # noqa: F401
    except ImportError:
        pass


class ChatSession:
    """The loaded model, the conversation so far, and the active adapter."""

    def __init__(self, cfg: ChatConfig, out=None):
        import torch

        from instructglm.generation.loading import choose_adapters, load_engine
        from instructglm.models.adapters import BASE

        self.cfg, self.out = cfg, out or sys.stdout
        loaded = load_engine(cfg.model, *choose_adapters(cfg.adapter, cfg.template))
        self.engine, self.template, self.names, self.base = loaded.engine, loaded.template, loaded.names, loaded.base
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.sampling = cfg.sampling()
        self.base_name = BASE
        self.active = self.names[0] if self.names else None
        self.limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        self.history: list[Message] = []
        self.reset()
        torch.manual_seed(cfg.seed)

    def say(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    def reset(self) -> None:
        self.history = [Message("system", self.cfg.system)] if self.cfg.system else []

    def switch(self, name: str | None) -> None:
        """``/adapter`` (list) or ``/adapter NAME``."""
        if not self.names:
            self.say("no adapters are loaded (start chat with --adapter PATH or --adapter NAME=PATH)")
            return
        if not name:
            listed = [f"{n} (active)" if n == self.active else n for n in self.names]
            if hasattr(self.model, "disable_adapter"):
                listed.append(f"{self.base_name} (active)" if self.active is None else self.base_name)
            self.say("adapters: " + ", ".join(listed))
            return
        if name == self.base_name and hasattr(self.model, "disable_adapter"):
            self.active = None
        elif name in self.names:
            if len(self.names) > 1:
                self.model.set_adapter(name)
            self.active = name
        else:
            known = [*self.names, *([self.base_name] if hasattr(self.model, "disable_adapter") else [])]
            self.say(f"unknown adapter '{name}'; loaded: {', '.join(known)}")
            return
        self.say(f"(now answering with {'the base model' if self.active is None else 'adapter ' + name})")

    def _prompt_ids(self) -> list[int] | None:
        """The prompt for the conversation; the oldest turns are dropped when it would not fit."""
        while True:
            ids = self.engine.prompt_ids(self.template, self.history)
            if not self.limit or len(ids) + self.sampling.max_new_tokens <= self.limit:
                return ids
            first = 1 if self.history and self.history[0].role == "system" else 0
            if len(self.history) - first <= 1:
                return None
            del self.history[first:first + 2]
            self.say("(the conversation got too long for the model: the oldest turn was dropped)")

    def answer(self, text: str) -> str | None:
        """Generate and stream the answer to ``text``; it joins the history unless stopped with Ctrl-C."""
        self.history.append(Message("user", text))
        ids = self._prompt_ids()
        if ids is None:
            self.history.pop()
            self.say("(that message is too long for the model; nothing was generated)")
            return None
        base = self.active is None and bool(self.names)
        try:
            with self.model.disable_adapter() if base else nullcontext():
                reply, = self.engine.generate([ids], self.sampling, self.template.stop,
                                              on_text=lambda _, piece: self.say(piece, end=""))
        except KeyboardInterrupt:  # Ctrl-C while generating: this answer only
            self.say()
            self.history.pop()
            self.say("(stopped; this turn is forgotten)")
            return None
        except BaseException:
            self.say()
            self.history.pop()
            raise
        self.say()
        self.history.append(Message("assistant", reply))
        return reply


def chat(cfg: ChatConfig) -> dict:
    """The interactive loop; returns the number of answered turns."""
    _utf8_streams()
    session = ChatSession(cfg)
    _line_editing()
    who = f"{session.base}" + (f" with adapter {session.active}" if session.active else "")
    if len(session.names) > 1:
        who += f" (loaded: {', '.join(session.names)})"
    session.say(f"chatting with {who}; {HELP}")
    turns = 0
    while True:
        try:
            line = input(PROMPT)
        except EOFError:
            session.say()
            break
        except KeyboardInterrupt:
            session.say("\n(use /exit or Ctrl-D to quit)")
            continue
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, arg = text.partition(" ")
            if command in ("/exit", "/quit"):
                break
            if command == "/reset":
                session.reset()
                session.say("(conversation cleared)")
            elif command == "/adapter":
                session.switch(arg.strip() or None)
            elif command == "/help":
                session.say(HELP)
            else:
                session.say(f"unknown command {command}; {HELP}")
            continue
        if session.answer(text) is not None:
            turns += 1
    return {"turns": turns}

