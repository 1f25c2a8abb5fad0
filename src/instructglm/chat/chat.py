"""``chat``: talk to a model (with or without adapters) in the terminal, tokens shown as they come.

The conversation is rendered with the same template code as training and ``infer`` (earlier turns
included, each past answer closed by EOS exactly as in training), so what the model sees matches
what it was tuned on. Generation runs in a thread and a ``TextIteratorStreamer`` hands the text
over piece by piece; text that might be the start of the template's next turn marker is held back
until it is clear, and the answer ends at such a marker.

Commands: ``/reset`` (forget the conversation), ``/adapter [NAME]`` (list or switch adapters when
several are loaded; ``base`` switches them off), ``/help``, ``/exit`` (or Ctrl-D). Ctrl-C stops the
answer being generated. Input and output are UTF-8 whatever the locale says.
"""

from __future__ import annotations

import sys
import threading
from contextlib import nullcontext
from dataclasses import dataclass

from instructglm.config import opt
from instructglm.infer.infer import check_sampling

PROMPT = ">>> "
HELP = ("commands: /reset forgets the conversation, /adapter [NAME] lists or switches adapters "
        "('base' = adapters off), /exit or Ctrl-D quits; Ctrl-C stops an answer")


@dataclass
class ChatConfig:
    model: str = opt("gemma3-270m", help="base model")
    adapter: list[str] = opt([], help="trained output directory; give NAME=PATH several times to load "
                                      "several adapters and switch with /adapter NAME")
    template: str | None = opt(None, help="prompt template; default: the adapter's, else alpaca")
    system: str | None = opt(None, help="system prompt that opens the conversation")
    max_new_tokens: int = opt(256, help="at most this many tokens per answer")
    temperature: float = opt(0.0, help="0 = greedy decoding; > 0 samples")
    top_p: float = opt(1.0, help="nucleus sampling (with temperature > 0)")
    top_k: int = opt(0, help="sample from the k most likely tokens (with temperature > 0); 0 = off")
    repetition_penalty: float = opt(1.0, help="> 1 discourages repeating tokens")
    seed: int = opt(0, help="sampling seed")

    def validate(self) -> None:
        check_sampling(self)


class StreamCutter:
    """Decides which streamed text can be shown: nothing before the first non-space character,
    nothing from a turn marker on, and never a tail that may still become a marker or that is only
    whitespace (the final answer is stripped)."""

    def __init__(self, markers):
        self.markers = [m for m in markers if m]
        self.longest = max((len(m) for m in self.markers), default=0)
        self.text = ""
        self.shown = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The part of the answer that can be shown now that ``piece`` has arrived."""
        if self.stopped:
            return ""
        self.text += piece
        body = self.text.lstrip()
        hits = [at for at in (body.find(m) for m in self.markers) if at >= 0]
        if hits:
            self.stopped = True
            end = min(hits)
        else:
            end = len(body)
            for k in range(min(len(body), self.longest - 1), 0, -1):
                if any(m.startswith(body[-k:]) for m in self.markers):
                    end -= k
                    break
        end = len(body[:end].rstrip())
        out = body[self.shown:end] if end > self.shown else ""
        self.shown = max(self.shown, end)
        return out


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

        from instructglm.templates import get_template
        from instructglm.models.adapters import BASE, load_with_adapters, parse_adapters
        from instructglm.infer.infer import Generator, choose_template, common_run_info

        self.cfg, self.out = cfg, out or sys.stdout
        adapters = parse_adapters(cfg.adapter)
        template_name = choose_template(cfg.template, common_run_info(adapters))
        self.model, self.tokenizer, self.names = load_with_adapters(cfg.model, adapters)
        self.template = get_template(template_name, self.tokenizer)
        self.base_name = BASE
        self.active = self.names[0] if self.names else None
        self.gen = Generator(self.model, self.tokenizer, self.template, cfg.max_new_tokens, cfg.temperature,
                             cfg.top_p, cfg.top_k, cfg.repetition_penalty)
        self.limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        self.history: list[dict] = []
        self.reset()
        torch.manual_seed(cfg.seed)

    def say(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    def reset(self) -> None:
        self.history = [{"role": "system", "content": self.cfg.system}] if self.cfg.system else []

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
            ids = self.gen.prompt_ids(self.history)
            if not self.limit or len(ids) + self.cfg.max_new_tokens <= self.limit:
                return ids
            first = 1 if self.history and self.history[0]["role"] == "system" else 0
            if len(self.history) - first <= 1:
                return None
            del self.history[first:first + 2]
            self.say("(the conversation got too long for the model: the oldest turn was dropped)")

    def answer(self, text: str) -> str | None:
        """Generate and stream the answer to ``text``; it joins the history unless stopped with Ctrl-C."""
        import torch
        from transformers import TextIteratorStreamer

        from instructglm.infer.infer import StopWhenSet

        self.history.append({"role": "user", "content": text})
        ids = self._prompt_ids()
        if ids is None:
            self.history.pop()
            self.say("(that message is too long for the model; nothing was generated)")
            return None
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()
        kwargs = self.gen.generate_kwargs(len(ids), extra_stops=[StopWhenSet(cancel)])
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        errors: list[BaseException] = []
        base = self.active is None and bool(self.names)

        def work():
            try:
                with torch.inference_mode(), (self.model.disable_adapter() if base else nullcontext()):
                    self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                        streamer=streamer, **kwargs)
            except BaseException as e:  # shown in the main thread
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        cutter = StreamCutter(self.template.stop)
        stopped = False
        try:
            for piece in streamer:
                shown = cutter.feed(piece)
                if shown:
                    self.out.write(shown)
                    self.out.flush()
                if cutter.stopped:
                    cancel.set()  # a new turn began: no need to generate it
        except KeyboardInterrupt:
            stopped = True
            cancel.set()
            for _ in streamer:
                pass
        thread.join()
        self.say()
        if errors:
            self.history.pop()
            raise errors[0]
        if stopped:
            self.history.pop()
            self.say("(stopped; this turn is forgotten)")
            return None
        reply = self.template.cut(cutter.text)
        self.history.append({"role": "assistant", "content": reply})
        return reply


def chat(cfg: ChatConfig) -> dict:
    """The interactive loop; returns the number of answered turns."""
    check_sampling(cfg)
    _utf8_streams()
    session = ChatSession(cfg)
    _line_editing()
    who = f"{cfg.model}" + (f" with adapter {session.active}" if session.active else "")
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

