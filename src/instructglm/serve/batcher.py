"""``serve``'s schedulers: one thread owns the model; :class:`Scheduler` is what both share.

Two schedulers run requests on the engine: :class:`~instructglm.serve.continuous.ContinuousBatcher`
(the default: requests join the running batch at any step) and the wave :class:`Batcher` here, kept
behind ``serve --scheduler wave`` for comparison. Requests are put on a queue from any thread. The
wave batcher thread takes every waiting request (up to
``max_batch``, after a short gathering window so that requests sent together land in one wave),
groups them by adapter and hands each group to :meth:`Engine.decode
<instructglm.generation.engine.Engine.decode>`, which decodes the wave step by step over one KV
cache; each row stops on its own (EOS, a stop string, ``max_tokens``, or its client going away).
What a request gets back is a stream of typed events through its ``sink``: :class:`Delta` pieces
of text (held back where they could still become a stop string or half a character, so they add
up to the final answer), then one :class:`Done`, or :class:`Failed`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Union

from instructglm.generation.engine import Engine, Row
from instructglm.generation.sampling import SamplingConfig
from instructglm.generation.text import TextStream
from instructglm.models.adapters import BASE
from instructglm.serve.metrics import Metrics

log = logging.getLogger(__name__)


_handing = threading.local()


@contextlib.contextmanager
def handing_out():
    """The scheduler thread hands a step's tokens out inside this: sinks that would wake another
    thread for each event (:class:`~instructglm.serve.replies.Mailbox`) wake it once, at the end."""
    _handing.wakes = wakes = {}
    try:
        yield
    finally:
        _handing.wakes = None
        for wake in wakes.values():
            wake()


def wake_after_handing(key, wake) -> bool:
    """Inside :func:`handing_out`: ``wake()`` runs once at its end (once per ``key``); True. Else False."""
    wakes = getattr(_handing, "wakes", None)
    if wakes is None:
        return False
    wakes.setdefault(key, wake)
    return True


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Done:
    reason: str  # "stop", "length" or "cancelled"
    tokens: int  # generated tokens of the answer


@dataclass(frozen=True)
class Failed:
    message: str


Event = Union[Delta, Done, Failed]


@dataclass
class GenRequest:
    prompt_ids: list[int]
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    adapter: str = BASE
    stops: tuple[str, ...] = ()
    strip: bool = False  # chat answers: no surrounding whitespace (as the template's cut)
    ignore_eos: bool = False
    sink: Callable[[Event], None] = lambda event: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    arrived: float = field(default_factory=time.monotonic)
    first_at: float | None = None  # when its first text was shown (metrics)
    last_at: float = 0.0  # when its latest text was shown

    def cancel(self) -> None:
        self.cancelled.set()


class Scheduler:
    """Owns the engine's model; ``submit`` requests from any thread, ``start``/``stop`` the worker.

    ``adapters``: the adapters attached to the model; ``stats`` are read by tests and ``/metrics``.
    """

    name = "scheduler"

    def __init__(self, engine: Engine, adapters: list[str] | None = None, max_batch: int = 16, seed: int = 0):
        import torch

        self.engine = engine
        self.adapters = list(adapters or [])
        self.max_batch = max(1, max_batch)
        self.rng = torch.Generator(device="cpu").manual_seed(seed)
        self.metrics = Metrics()
        self._queue: queue.Queue[GenRequest | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.stats = {"requests": 0, "batches": 0, "max_batch": 0, "cancelled": 0, "active": 0, "errors": 0}

    # -- public -------------------------------------------------------------------------------
    def start(self) -> "Scheduler":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"instructglm-{self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, req: GenRequest) -> None:
        self._queue.put(req)

    def pending(self) -> int:
        return self._queue.qsize() + self.stats["active"]

    def queued(self) -> int:
        return self._queue.qsize()

    def _loop(self) -> None:
        raise NotImplementedError

    def _row(self, req: GenRequest) -> Row:
        """The engine row of ``req``: its text goes to the request's sink, its end is counted and logged."""
        engine, metrics = self.engine, self.metrics
        stream = TextStream(engine.tokenizer, req.stops, req.strip, None if req.ignore_eos else engine.eos,
                            req.sampling.max_new_tokens, on_text=lambda text: (metrics.text(req, time.monotonic()),
                                                                             req.sink(Delta(text))))

        def end() -> None:
            if stream.reason == "cancelled":
                self.stats["cancelled"] += 1
            else:
                self.stats["requests"] += 1
            metrics.finished(req, stream.reason, stream.tokens, time.monotonic())
            req.sink(Done(stream.reason, stream.tokens))

        def failed(error: BaseException) -> None:  # this request alone: the rest of the batch goes on
            log.error("request %s failed: %s: %s", req.id, type(error).__name__, error)
            self.stats["errors"] += 1
            metrics.finished(req, "error", stream.tokens, time.monotonic())
            req.sink(Failed(f"generation failed: {type(error).__name__}"))

        return Row(req.prompt_ids, stream, req.sampling, req.cancelled.is_set, end,
                   None if req.adapter == BASE else req.adapter, failed)


class Batcher(Scheduler):
    """The wave scheduler (``--scheduler wave``): waiting requests run together, grouped by adapter,
    and newcomers wait for the whole wave."""

    name = "wave"

    def __init__(self, engine: Engine, adapters: list[str] | None = None, max_batch: int = 16,
                 gather_ms: float = 5.0, seed: int = 0):
        super().__init__(engine, adapters, max_batch, seed)
        self.gather_s = gather_ms / 1000

    # -- worker -------------------------------------------------------------------------------
    def _gather(self, first: GenRequest) -> tuple[list[GenRequest], bool]:
        """``first`` and whatever arrives within the gathering window; True when told to stop."""
        batch = [first]
        deadline = time.monotonic() + self.gather_s
        while len(batch) < self.max_batch:
            try:
                wait = deadline - time.monotonic()
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                return batch, False
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._gather(first)
            groups: dict[str, list[GenRequest]] = {}
            for req in batch:
                groups.setdefault(req.adapter, []).append(req)
            for name, reqs in groups.items():
                self.stats["active"] += len(reqs)
                try:
                    self._run(name, reqs)
                except Exception as e:  # a bug or out of memory: fail these requests, keep serving
                    log.exception("generation failed for a batch of %d", len(reqs))
                    self.stats["errors"] += 1
                    for req in reqs:
                        req.sink(Failed(f"generation failed: {type(e).__name__}"))
                finally:
                    self.stats["active"] -= len(reqs)
            if stop:
                return

    def _adapter(self, name: str):
        model = self.engine.model
        if not self.adapters or not hasattr(model, "set_adapter"):
            return contextlib.nullcontext()
        if name == BASE:
            return model.disable_adapter()
        model.set_adapter(name)
        return contextlib.nullcontext()

    def _run(self, adapter: str, reqs: list[GenRequest]) -> None:
        waiting = [r for r in reqs if not r.cancelled.is_set()]  # gone before their turn: nothing to send
        self.stats["cancelled"] += len(reqs) - len(waiting)
        if not waiting:
            return
        self.stats["batches"] += 1
        self.stats["max_batch"] = max(self.stats["max_batch"], len(waiting))
        with self._adapter(adapter):
            self.engine.decode([self._row(r) for r in waiting], self.rng, handing_out)
