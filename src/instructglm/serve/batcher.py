"""The generation engine behind ``serve``: one thread owns the model and batches waiting requests.

Requests are put on a queue from any thread. The engine thread takes every waiting request (up to
``max_batch``, after a short gathering window so that requests sent together land in one batch),
groups them by adapter, and runs one token-by-token decode loop per group over a left-padded batch
with a KV cache. Each row stops on its own (EOS, a stop string, ``max_tokens``, or its client going
away); finished rows are dropped from the batch and the cache. Text is handed back as it is
generated through the request's ``sink`` callback, held back only where it could still turn out to
be the start of a stop string or an incomplete UTF-8 character, so streamed pieces always add up to
the final answer.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)

BASE = "base"


@dataclass
class GenRequest:
    prompt_ids: list[int]
    adapter: str = BASE
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stops: tuple[str, ...] = ()
    strip: bool = False  # chat answers: no surrounding whitespace (as Template.cut)
    ignore_eos: bool = False
    sink: Callable[[tuple], None] = lambda event: None  # ("delta", text) / ("done", reason, n) / ("error", msg)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class _Row:
    """Decoding state of one request inside a batch."""

    def __init__(self, req: GenRequest, tokenizer, eos: int | None):
        self.req, self.tokenizer, self.eos = req, tokenizer, eos
        self.ids: list[int] = []
        self.emitted = 0
        self.done = False

    def _visible(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return text.lstrip() if self.req.strip else text

    def push(self, token: int) -> None:
        """Add one generated token; emit the text that can no longer change; finish if due."""
        req = self.req
        if token == self.eos and not req.ignore_eos:
            self._finish(self._visible(), "stop")
            return
        self.ids.append(token)
        text = self._visible()
        cut = min((at for at in (text.find(s) for s in req.stops) if at >= 0), default=-1)
        if cut >= 0:
            self._finish(text[:cut], "stop")
            return
        if len(self.ids) >= req.max_tokens:
            self._finish(text, "length")
            return
        safe = len(text)
        while safe > self.emitted and text[safe - 1] == "\ufffd":  # a multi-byte character not complete yet
            safe -= 1
        for s in req.stops:  # the tail could be the beginning of a stop string
            for k in range(min(len(s) - 1, safe), 0, -1):
                if text[:safe].endswith(s[:k]):
                    safe -= k
                    break
        if req.strip:
            safe = len(text[:safe].rstrip())
        if safe > self.emitted:
            req.sink(("delta", text[self.emitted:safe]))
            self.emitted = safe

    def _finish(self, text: str, reason: str) -> None:
        if self.req.strip:
            text = text.rstrip()
        if len(text) > self.emitted:
            self.req.sink(("delta", text[self.emitted:]))
            self.emitted = len(text)
        self.done = True
        self.req.sink(("done", reason, len(self.ids)))

    def drop(self) -> None:
        self.done = True
        self.req.sink(("done", "cancelled", len(self.ids)))


class Engine:
    """Owns the model; ``submit`` requests from any thread, ``start``/``stop`` the worker."""

    def __init__(self, model, tokenizer, adapters: list[str] | None = None, max_batch: int = 16,
                 gather_ms: float = 5.0, seed: int = 0):
        import torch

        self.model, self.tokenizer = model, tokenizer
        self.adapters = list(adapters or [])
        self.max_batch, self.gather_s = max(1, max_batch), gather_ms / 1000
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos = tokenizer.eos_token_id
        self.device = next(model.parameters()).device
        self.rng = torch.Generator(device="cpu").manual_seed(seed)
        self._queue: queue.Queue[GenRequest | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.stats = {"requests": 0, "batches": 0, "max_batch": 0, "cancelled": 0, "active": 0, "errors": 0}

    # -- public -------------------------------------------------------------------------------
    def start(self) -> "Engine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="instructglm-engine", daemon=True)
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

    def context_length(self) -> int:
        cfg = getattr(self.model, "config", None)
        return int(getattr(cfg, "max_position_embeddings", None) or 2048)

    # -- worker -------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.gather_s
            stop = False
            while len(batch) < self.max_batch:
                try:
                    wait = deadline - time.monotonic()
                    item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
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
                        req.sink(("error", f"generation failed: {type(e).__name__}"))
                finally:
                    self.stats["active"] -= len(reqs)
            if stop:
                return

    def _adapter(self, name: str):
        model = self.model
        if not self.adapters or not hasattr(model, "set_adapter"):
            return contextlib.nullcontext()
        if name == BASE:
            return model.disable_adapter()
        model.set_adapter(name)
        return contextlib.nullcontext()

    def _run(self, adapter: str, reqs: list[GenRequest]) -> None:
        import torch

        reqs = [r for r in reqs if not self._dropped(r)]
        if not reqs:
            return
        self.stats["batches"] += 1
        self.stats["max_batch"] = max(self.stats["max_batch"], len(reqs))
        rows = [_Row(r, self.tokenizer, self.eos) for r in reqs]
        width = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((len(reqs), width), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(reqs):  # left padding: every prompt ends where generation starts
            ids[i, width - len(r.prompt_ids):] = torch.as_tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        temps = torch.tensor([r.temperature for r in reqs], dtype=torch.float32)
        top_ps = torch.tensor([r.top_p for r in reqs], dtype=torch.float32)
        ids, mask, pos = ids.to(self.device), mask.to(self.device), pos.to(self.device)
        cache = None
        live = list(range(len(rows)))  # rows still in the batch, in batch order
        with torch.inference_mode(), self._adapter(adapter):
            while live:
                out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                                 use_cache=True, logits_to_keep=1)
                cache = out.past_key_values
                nxt = self._pick(out.logits[:, -1, :].float().cpu(), temps, top_ps).tolist()
                for j, i in enumerate(live):
                    row = rows[i]
                    if self._dropped(row.req):
                        row.drop()
                    else:
                        row.push(nxt[j])
                keep = [j for j, i in enumerate(live) if not rows[i].done]
                if len(keep) < len(live):
                    if not keep:
                        break
                    index = torch.tensor(keep, dtype=torch.long)
                    cache.batch_select_indices(index.to(self.device))
                    mask, pos, temps, top_ps = mask[index.to(self.device)], pos[index.to(self.device)], \
                        temps[index], top_ps[index]
                    nxt = [nxt[j] for j in keep]
                    live = [live[j] for j in keep]
                ids = torch.tensor(nxt, dtype=torch.long, device=self.device)[:, None]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                pos = pos[:, -1:] + 1
        self.stats["requests"] += len(rows)

    def _dropped(self, req: GenRequest) -> bool:
        if req.cancelled.is_set():
            self.stats["cancelled"] += 1
            return True
        return False

    def _pick(self, logits, temps, top_ps):
        """Next token per row: greedy where temperature is 0, else temperature + nucleus sampling."""
        import torch

        greedy = logits.argmax(-1)
        sample = temps > 0
        if not bool(sample.any()):
            return greedy
        probs = torch.softmax(logits / temps.clamp(min=1e-5)[:, None], dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        outside = (sorted_p.cumsum(-1) - sorted_p) >= top_ps[:, None]  # the first token always stays
        sorted_p = sorted_p.masked_fill(outside, 0.0)
        choice = torch.multinomial(sorted_p, 1, generator=self.rng).squeeze(-1)
        drawn = order.gather(-1, choice[:, None]).squeeze(-1)
        return torch.where(sample, drawn, greedy)
