"""``serve``'s default scheduler: continuous batching with mixed adapters in one forward.

The worker thread loops one step at a time over a :class:`~instructglm.generation.batch.DecodeBatch`:
take what arrived, start a prefill group of newcomers (as many as there are free slots), feed it one
bounded chunk of prompt, then one decode token for every running row. A request therefore waits at
most one step to start, a row leaves as soon as its answer is over or its client is gone, and rows
for different LoRA adapters (and ``base``) share each forward through PEFT's ``adapter_names``.

Why not transformers' own continuous batching (``generate_batch`` / ``ContinuousBatchingManager``,
transformers 5 ``init_continuous_batching``)? Its paged cache and scheduler drive the model's
forward themselves, with no per-request ``adapter_names`` (so one forward cannot mix LoRA
adapters), no PEFT prompt-learning prefixes, and its own stopping: our answers must end exactly
where ``infer``/``chat`` end them (template markers, request ``stop`` strings held back while they
may still form, EOS, byte-level characters never split), which needs each token streamed through
our :class:`~instructglm.generation.text.TextStream` as it comes. ``bench/serve.py`` still runs it
on the same prompts (base model) as an outside reference.

P-Tuning prefixes live in the KV cache and cannot share a forward with other adapters, and models
whose cache is not transformers' ``DynamicCache`` (remote-code ChatGLM) cannot be merged row-wise:
:func:`why_not_continuous` says so and ``serve`` uses the wave scheduler for them.
"""

from __future__ import annotations

import logging
import queue
from collections import deque

from instructglm.generation.batch import DecodeBatch, cache_supported
from instructglm.generation.engine import Engine, Row
from instructglm.serve.batcher import Failed, GenRequest, Scheduler, handing_out

log = logging.getLogger(__name__)

ADMIT_AFTER_STEPS = 3  # while rows decode, newcomers wait at most this many steps to be prefilled together
ADMIT_ROWS = 8  # ... or until this many wait


def lora_only(model) -> bool:
    """True for a PEFT model whose adapters are all LoRA (they can be mixed per row)."""
    configs = getattr(model, "peft_config", None) or {}
    return bool(configs) and all(str(getattr(c, "peft_type", "")).endswith("LORA") for c in configs.values())


def why_not_continuous(engine: Engine) -> str | None:
    """Why this model cannot be batched continuously (None when it can)."""
    import torch

    model = engine.model
    if getattr(model, "peft_config", None) and not lora_only(model):
        return "P-Tuning/prompt-learning adapters keep their prefix in the KV cache and cannot share a forward"
    ids = torch.tensor([[engine.pad, engine.pad]], device=engine.device)
    try:  # the wave scheduler's forward takes the same arguments: a model that refuses them fails there too
        with torch.inference_mode():
            _, cache = engine.forward(ids, torch.ones_like(ids), None, None)
    except (TypeError, ValueError) as e:
        return f"a probe forward with a KV cache failed ({type(e).__name__}: {e})"
    if not cache_supported(cache):
        return f"its KV cache ({type(cache).__name__}) cannot be merged row by row"
    return None


class ContinuousBatcher(Scheduler):
    """Requests join the running batch at the next step and leave when done (see the module docstring).

    ``prefill_tokens``: prompt tokens fed per step to newcomers, so decoding rows never wait for
    more than one such chunk.
    """

    name = "continuous"

    def __init__(self, engine: Engine, adapters: list[str] | None = None, max_batch: int = 16, seed: int = 0,
                 prefill_tokens: int = 512):
        super().__init__(engine, adapters, max_batch, seed)
        self.batch = DecodeBatch(engine, self.rng, prefill_tokens, mixed=lora_only(engine.model), handing=handing_out)
        self._waiting: deque[GenRequest] = deque()  # taken off the queue, not yet in the batch
        self._live: dict[int, GenRequest] = {}  # id(row) -> its request, while the row is in the batch
        self._held = 0  # steps the waiting requests have been held back (see _ready)

    def queued(self) -> int:
        return self._queue.qsize() + len(self._waiting)

    def _take(self, block: bool) -> bool:
        """Move what arrived into the waiting line (waiting for it when idle); False when told to stop."""
        try:
            item = self._queue.get() if block else self._queue.get_nowait()
            while True:
                if item is None:
                    return False
                self._waiting.append(item)
                self.stats["active"] += 1  # until its answer is over: counted before the client hears so
                item = self._queue.get_nowait()
        except queue.Empty:
            return True

    def _loop(self) -> None:
        while self._take(block=not self._waiting and not len(self.batch)):
            try:
                self._step()
            except Exception as e:  # a bug or out of memory: fail the rows in the batch, keep serving
                log.exception("generation failed for a batch of %d", len(self.batch))
                self.stats["errors"] += 1
                self._fail(f"generation failed: {type(e).__name__}")
        self._fail("the server is shutting down")
        while self._waiting:
            self._waiting.popleft().sink(Failed("the server is shutting down"))

    def _fail(self, message: str) -> None:
        for row in self.batch.clear():
            self.stats["active"] -= 1
            self._live.pop(id(row)).sink(Failed(message))

    def _admit(self) -> list[Row]:
        rows = []
        while self._waiting and len(self.batch) + len(rows) < self.max_batch:
            req = self._waiting.popleft()
            if req.cancelled.is_set():  # gone before its turn: nothing to send
                self.stats["cancelled"] += 1
                self.stats["active"] -= 1
                continue
            row = self._row(req)
            row.on_end, row.on_error = self._ended(row, row.on_end), self._ended(row, row.on_error)
            self._live[id(row)] = req
            rows.append(row)
        return rows

    def _ended(self, row: Row, end):
        """``end`` (the row's ``on_end`` or ``on_error``), run once the row is out of the books."""
        def ended(*error) -> None:
            if self._live.pop(id(row), None) is not None:  # once, even if ending raises and then fails it
                self.stats["active"] -= 1
                end(*error)
        return ended

    def _ready(self) -> bool:
        """Whether the waiting requests start their prefill now. A prefill is a forward of its own
        next to the step's decode, so while rows are decoding newcomers that trickle in one by one
        are gathered for a few steps (at most ``ADMIT_AFTER_STEPS``, or until ``ADMIT_ROWS`` wait or
        every free slot is spoken for) and prefilled together; with nothing decoding they start at once."""
        if not self._waiting:
            self._held = 0
            return False
        free = self.max_batch - len(self.batch)
        self._held += 1
        return (self.batch.running is None or self._held > ADMIT_AFTER_STEPS
                or len(self._waiting) >= min(free, ADMIT_ROWS))

    def _step(self) -> None:
        batch = self.batch
        if not batch.prefilling and self._ready():
            self._held = 0
            rows = self._admit()
            if rows:
                batch.admit(rows)
                self.stats["batches"] += 1
        self.stats["max_batch"] = max(self.stats["max_batch"], len(batch))
        if batch.prefilling:
            batch.prefill_step()
        if batch.running is not None:
            batch.decode_step()
