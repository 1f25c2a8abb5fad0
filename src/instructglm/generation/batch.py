"""Continuous batching on one KV cache: rows join at any step (after a chunked prefill) and leave at any step.

:class:`DecodeBatch` is the state ``serve``'s continuous scheduler drives, one call per step:

* :meth:`DecodeBatch.admit` takes newcomers as one *prefill group* with its own left-padded cache;
  :meth:`DecodeBatch.prefill_step` feeds that group at most ``prefill_tokens`` prompt tokens per
  call, so a long prompt costs the decoding rows several short pauses rather than one long stall.
  When the group's prompts are in, its first tokens are picked and its cache is merged into the
  running one (both left-padded to the same width and stacked on the batch axis).
* :meth:`DecodeBatch.decode_step` runs one token for every running row; rows that are over (EOS,
  stop string, ``max_tokens``, cancelled) leave at once, and cache columns that have become padding
  for every remaining row are cut so the cache does not grow with the server's uptime.

Rows for different LoRA adapters share each forward through PEFT's per-row ``adapter_names``.
Every row keeps its own position ids, so the answers are the ones each prompt gets alone.

Cache surgery works on transformers' ``DynamicCache`` layers (full attention, and sliding-window
layers whose stored tail and length are adjusted the same way); :func:`cache_supported` says
whether a model's cache is of that kind.
"""

from __future__ import annotations

from instructglm.generation.engine import Row, hand_out, left_pad, pick_rows

PEFT_BASE = "__base__"  # PEFT's name for "no adapter" in adapter_names


def _layers(cache):
    return getattr(cache, "layers", None)


def cache_supported(cache) -> bool:
    """True when every layer of ``cache`` is one :func:`merge_caches` and :func:`trim_cache` know."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers = _layers(cache)
    return bool(layers) and all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


def _pad_columns(t, width: int):
    """``t`` (batch, heads, columns, dim) left-padded with zeros to ``width`` columns (masked anyway)."""
    import torch

    missing = width - t.shape[-2]
    if missing <= 0:
        return t
    return torch.cat([t.new_zeros(*t.shape[:-2], missing, t.shape[-1]), t], dim=-2)


def merge_caches(running, group) -> None:
    """Append ``group``'s rows to ``running`` in place; both are aligned on their last column.

    A sliding-window layer stores only its last columns and counts all of them in
    ``cumulative_length``: the stored tails are aligned the same way and the count is the wider one.
    """
    import torch

    for a, b in zip(running.layers, group.layers):
        width = max(a.keys.shape[-2], b.keys.shape[-2])
        a.keys = torch.cat([_pad_columns(a.keys, width), _pad_columns(b.keys, width)], dim=0)
        a.values = torch.cat([_pad_columns(a.values, width), _pad_columns(b.values, width)], dim=0)
        if hasattr(a, "cumulative_length"):
            a.cumulative_length = max(a.cumulative_length, b.cumulative_length)


def trim_cache(cache, columns: int) -> None:
    """Drop the first ``columns`` columns (padding for every row) from every layer of ``cache``."""
    for layer in cache.layers:
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length -= columns
            keep = min(layer.keys.shape[-2], layer.cumulative_length)
        else:
            keep = layer.keys.shape[-2] - columns
        layer.keys, layer.values = layer.keys[..., -keep:, :], layer.values[..., -keep:, :]


class RowLoRA:
    """Each row its own LoRA adapter (or none) in one forward, at the cost of one adapter.

    PEFT's per-row ``adapter_names`` splits every LoRA layer's input by adapter and runs each part
    on its own (about ten tensor ops per adapter per layer, and a walk over every module per forward
    to hook them), which made a mixed 64-row step twice as slow as a one-adapter step. Here every
    LoRA layer holds its adapters side by side, ``A`` stacked (adapters x rank, in) and ``B`` (with
    its scaling) joined (out, adapters x rank): one matmul gives every row every adapter's low-rank
    projection, a per-row 0/1 mask keeps the row's own block (zeros for the base), and a second
    matmul adds it to the base layer's output. PEFT's adapter layers are switched off meanwhile, so
    its forward is the base layer's. Plain LoRA on ``nn.Linear`` only (what ``train`` makes):
    :meth:`build` says None for anything else (DoRA and other variants, embeddings, biases) and the
    batch falls back to ``adapter_names``.
    """

    def __init__(self, layers: list, names: list[str], rank: int):
        self.names, self.rank = names, rank
        self.mask = None  # (rows, 1, adapters x rank) during one forward, None otherwise
        self.dtype = layers[0][1].dtype
        for module, a, b in layers:
            module.register_forward_hook(self._hook(a, b))

    @classmethod
    def build(cls, model) -> "RowLoRA | None":
        """The model's RowLoRA (made once, its hooks stay), or None where it does not apply."""
        import torch
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.tuners_utils import BaseTunerLayer

        if hasattr(model, "_instructglm_row_lora"):
            return model._instructglm_row_lora
        names = list(getattr(model, "peft_config", None) or {})
        tuners = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        plain = all(type(m) is LoraLinear and isinstance(m.base_layer, torch.nn.Linear) and not m.lora_variant
                    and not getattr(m, "fan_in_fan_out", False) and set(m.lora_A) <= set(names)
                    and all(m.lora_B[k].bias is None for k in m.lora_B) for m in tuners)
        if not (names and tuners and plain):
            return None
        rank = max(m.r[k] for m in tuners for k in m.lora_A)
        layers = []
        with torch.no_grad():
            for m in tuners:
                weight = m.base_layer.weight
                dtype = next(iter(m.lora_A.values())).weight.dtype
                a = weight.new_zeros(len(names) * rank, m.in_features, dtype=dtype)
                b = weight.new_zeros(m.out_features, len(names) * rank, dtype=a.dtype)
                for i, name in enumerate(names):
                    if name in m.lora_A:
                        r = m.r[name]
                        a[i * rank:i * rank + r] = m.lora_A[name].weight
                        b[:, i * rank:i * rank + r] = m.lora_B[name].weight * m.scaling[name]
                layers.append((m, a, b))
        model._instructglm_row_lora = cls(layers, names, rank)
        return model._instructglm_row_lora

    def _hook(self, a, b):
        import torch.nn.functional as F

        def hook(module, args, output):
            if self.mask is None:
                return None
            low = F.linear(args[0].to(a.dtype), a) * self.mask
            return output + F.linear(low, b).to(output.dtype)
        return hook

    def masks(self, adapters: list[str], device):
        """The per-row mask of rows that want ``adapters`` (PEFT_BASE: none)."""
        import torch

        slot = {name: i for i, name in enumerate(self.names)}
        index = torch.tensor([slot.get(name, len(self.names)) for name in adapters], device=device)
        one_hot = torch.nn.functional.one_hot(index, len(self.names) + 1)[:, :len(self.names)]
        return one_hot.repeat_interleave(self.rank, dim=1)[:, None, :].to(self.dtype)


class _Rows:
    """Tensors that go with a list of rows, one entry each: the cached columns' mask, the next
    input token and its position, sampling settings and adapter names."""

    def __init__(self, rows: list[Row], mask, tokens, pos, device, mixed: bool):
        import torch

        self.rows, self.mask, self.tokens, self.pos = rows, mask, tokens, pos
        self.temps = torch.tensor([r.sampling.temperature for r in rows], dtype=torch.float32, device=device)
        self.top_ps = torch.tensor([r.sampling.top_p for r in rows], dtype=torch.float32, device=device)
        self.adapters = [r.adapter or PEFT_BASE for r in rows] if mixed else None
        self.cache = None
        self.lora_mask = None  # RowLoRA's mask of these rows, made when first needed
        self.reshaped = False  # rows left or joined: leading cache columns may have become padding for all

    def select(self, keep: list[int]) -> None:
        import torch

        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.rows = [self.rows[j] for j in keep]
        if self.adapters is not None:
            self.adapters = [self.adapters[j] for j in keep]
            self.lora_mask = None if self.lora_mask is None else self.lora_mask[index]
        self.mask, self.tokens, self.pos = self.mask[index], self.tokens[index], self.pos[index]
        self.temps, self.top_ps = self.temps[index], self.top_ps[index]
        self.cache.batch_select_indices(index)
        self.reshaped = True

    def extend(self, other: "_Rows") -> None:
        import torch

        width = max(self.mask.shape[1], other.mask.shape[1])
        self.mask = torch.cat([torch.nn.functional.pad(m, (width - m.shape[1], 0)) for m in (self.mask, other.mask)])
        self.tokens, self.pos = torch.cat([self.tokens, other.tokens]), torch.cat([self.pos, other.pos])
        self.temps, self.top_ps = torch.cat([self.temps, other.temps]), torch.cat([self.top_ps, other.top_ps])
        if self.adapters is not None:
            self.adapters += other.adapters
            self.lora_mask = None
        merge_caches(self.cache, other.cache)
        self.rows += other.rows
        self.reshaped = True


class DecodeBatch:
    """The running rows and at most one prefill group (see the module docstring).

    ``mixed``: rows may want different LoRA adapters (a PEFT model whose adapters are all LoRA).
    """

    def __init__(self, engine, generator, prefill_tokens: int = 512, mixed: bool = False, handing=None):
        import contextlib

        self.engine, self.generator = engine, generator
        self.handing = handing or contextlib.nullcontext  # a context around each hand-out (see Engine.decode)
        self.prefill_tokens, self.mixed = max(1, prefill_tokens), mixed
        self.running: _Rows | None = None
        self.group: _Rows | None = None
        self.group_ids = None  # the group's left-padded prompts, and how many columns are in its cache
        self.group_done = 0
        self._probe = None  # a LoRA layer of the model (see _adapters)
        self.row_lora = RowLoRA.build(engine.model) if mixed else None

    def __len__(self) -> int:
        return (len(self.running.rows) if self.running else 0) + (len(self.group.rows) if self.group else 0)

    @property
    def prefilling(self) -> bool:
        return self.group is not None

    def admit(self, rows: list[Row]) -> None:
        """Start prefilling ``rows`` (only when no group is prefilling)."""
        import torch

        assert self.group is None and rows
        device = self.engine.device
        ids, mask = left_pad([r.prompt_ids for r in rows], self.engine.pad)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        self.group = _Rows(rows, mask.to(device), None, pos.to(device), device, self.mixed)
        self.group_ids, self.group_done = ids.to(device), 0
        self.group.tokens = torch.empty(len(rows), dtype=torch.long, device=device)

    def _adapters(self, part: _Rows) -> dict:
        """The forward keywords that give each row of ``part`` its adapter.

        PEFT's per-row ``adapter_names`` hooks every module on each forward, and its
        ``disable_adapter()`` context walks every module on entry and exit (each several times a tiny
        model's step): so rows that all want one adapter get it made active, rows that all want the
        base get the adapter layers switched off, and both stay so until the rows want otherwise.
        """
        if part.adapters is None:
            return {}
        model, first = self.engine.model, part.adapters[0]
        names = set(part.adapters)
        by_row = len(names) > 1 and self.row_lora is not None
        off = names == {PEFT_BASE} or by_row  # PEFT's adapter layers switched off (RowLoRA adds its own)
        if self._probe is None:  # any LoRA layer says whether adapter layers are switched off
            from peft.tuners.tuners_utils import BaseTunerLayer

            self._probe = next(m for m in model.modules() if isinstance(m, BaseTunerLayer))
        if self._probe.disable_adapters != off:  # read each time: someone else may have switched them
            (model.base_model.disable_adapter_layers if off else model.base_model.enable_adapter_layers)()
        if by_row:
            if part.lora_mask is None:
                part.lora_mask = self.row_lora.masks(part.adapters, self.engine.device)
            self.row_lora.mask = part.lora_mask
            return {}
        if len(names) > 1:
            return {"adapter_names": part.adapters}
        if first != PEFT_BASE and model.active_adapter != first:
            model.set_adapter(first)
        return {}

    def _forward(self, part: _Rows, ids, mask, pos):
        import torch

        extra = self._adapters(part)
        try:
            with torch.inference_mode():
                logits, part.cache = self.engine.forward(ids, mask, pos, part.cache, **extra)
        finally:
            if self.row_lora is not None:  # the model serves others between steps (chat, tests)
                self.row_lora.mask = None
        return pick_rows(logits, part.temps, part.top_ps, self.generator)

    def prefill_step(self) -> None:
        """Feed the prefill group its next chunk of prompt; once all is in, its rows start decoding."""
        group, ids = self.group, self.group_ids
        width = max(1, self.prefill_tokens // len(group.rows))
        start, end = self.group_done, min(self.group_done + width, ids.shape[1])
        picked, errors = self._forward(group, ids[:, start:end], group.mask[:, :end], group.pos[:, start:end])
        self.group_done = end
        if end < ids.shape[1]:
            return
        group.pos = group.pos[:, -1] + 1
        group.tokens = picked
        self.group, self.group_ids = None, None
        self._advance(group, picked, errors)
        if not group.rows:
            return
        if self.running is None:
            self.running = group
        else:
            self.running.extend(group)

    def decode_step(self) -> None:
        """One token for every running row."""
        import torch

        run = self.running
        mask = torch.cat([run.mask, torch.ones_like(run.mask[:, :1])], dim=1)
        picked, errors = self._forward(run, run.tokens[:, None], mask, run.pos[:, None])
        run.mask, run.pos, run.tokens = mask, run.pos + 1, picked
        self._advance(run, picked, errors)
        if not run.rows:
            self.running = None
            return
        if run.reshaped:  # only rows leaving or joining make columns unused: not looked for on other steps
            run.reshaped = False
            unused = int((run.mask.sum(0) == 0).int().cumprod(0).sum())  # leading columns no row attends to
            if unused:
                run.mask = run.mask[:, unused:]
                trim_cache(run.cache, unused)

    def _advance(self, part: _Rows, picked, errors: dict) -> None:
        """Hand each row its token; rows that are over leave ``part`` (and their ``on_end`` runs), and
        so do rows that failed (their ``on_error`` runs) while the others go on."""
        with self.handing():
            keep = hand_out(part.rows, picked.tolist(), errors)
        if len(keep) < len(part.rows):
            part.select(keep)

    def clear(self) -> list[Row]:
        """Every row, removed from the batch (the scheduler fails them after an error)."""
        rows = (self.running.rows if self.running else []) + (self.group.rows if self.group else [])
        self.running = self.group = self.group_ids = None
        return rows
