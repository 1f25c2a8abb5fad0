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
from instructglm.serve.batcher import Failed, GenRequest, Scheduler

log = logging.getLogger(__name__)


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
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1)
    except (TypeError, ValueError) as e:
        return f"a probe forward with a KV cache failed ({type(e).__name__}: {e})"
    if not cache_supported(getattr(out, "past_key_values", None)):
        return f"its KV cache ({type(getattr(out, 'past_key_values', None)).__name__}) cannot be merged row by row"
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
        self.batch = DecodeBatch(engine, self.rng, prefill_tokens, mixed=lora_only(engine.model))
        self._waiting: deque[GenRequest] = deque()  # taken off the queue, not yet in the batch
        self._live: dict[int, GenRequest] = {}  # id(row) -> its request, while the row is in the batch

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
            row.on_end = self._ended(row, row.on_end)
            self._live[id(row)] = req
            rows.append(row)
        return rows

    def _ended(self, row: Row, end):
        def ended() -> None:
            self._live.pop(id(row), None)
            self.stats["active"] -= 1
            end()
        return ended

    def _step(self) -> None:
        batch = self.batch
        if not batch.prefilling:
            rows = self._admit()
            if rows:
                batch.admit(rows)
                self.stats["batches"] += 1
        self.stats["max_batch"] = max(self.stats["max_batch"], len(batch))
        if batch.prefilling:
            batch.prefill_step()
        if batch.running is not None:
            batch.decode_step()
