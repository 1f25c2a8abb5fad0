"""The one generation engine behind ``infer``, ``chat`` and ``serve`` (nanochat's ``Engine`` idea).

:class:`Engine` holds a model and its tokenizer and knows three things:

* how a prompt becomes ids: the conversation rendered by the template and encoded segment by
  segment exactly as ``tokenize`` encodes training rows (earlier answers closed by EOS as in
  training), so the model sees what it was tuned on;
* :meth:`Engine.generate`: a left-padded batch through transformers' ``generate`` (which every
  model family, P-Tuning prefixes and custom remote code support), each row's tokens fed to its
  :class:`~instructglm.generation.text.TextStream` as they come, so the row stops at EOS or at a
  stop string and streamed text (``chat``) and whole answers (``infer``) are the same text;
* :meth:`Engine.decode`: our own step-by-step loop over a KV cache with per-row sampling and rows
  leaving the batch as they finish, for ``serve``'s wave scheduler (``--scheduler wave``; the
  default continuous scheduler steps a :class:`~instructglm.generation.batch.DecodeBatch`, where
  rows also join mid-way).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from instructglm.generation.sampling import SamplingConfig, pick_next
from instructglm.generation.text import TextStream

DEFAULT_CONTEXT = 2048  # when a model's config does not say how long its context is

log = logging.getLogger(__name__)


def left_pad(prompts: list[list[int]], pad: int):
    """(ids, attention mask) of ``prompts`` padded on the left: every prompt ends where generation starts."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.as_tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids, mask


@dataclass
class Row:
    """One answer in :meth:`Engine.decode`: its prompt, how to sample it, where its text goes."""

    prompt_ids: list[int]
    stream: TextStream
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # temperature and top_p are used
    cancelled: Callable[[], bool] = lambda: False  # checked every step: the client went away
    on_end: Callable[[], None] = lambda: None  # called as soon as the row leaves the batch
    adapter: str | None = None  # DecodeBatch with mixed adapters: this row's LoRA adapter (None: the base)
    on_error: Callable[[BaseException], None] = lambda error: None  # the row failed and left; the others go on


def hand_out(rows: list[Row], tokens: list[int], errors: dict | None = None) -> list[int]:
    """Give each row its next token (a cancelled row ends instead); the indices of the rows still going.
    A row that is over has its ``on_end`` called here, before the next step. A row whose token could
    not be picked (``errors``: row index -> exception) or whose text or client fails leaves with its
    ``on_error`` called: one request's failure never ends the others."""
    keep = []
    for j, (row, token) in enumerate(zip(rows, tokens)):
        try:
            if errors and j in errors:
                raise errors[j]
            if row.cancelled():
                row.stream.cancel()
            else:
                row.stream.push(token)
            if row.stream.done:
                row.on_end()
                continue
        except Exception as e:  # noqa: BLE001 - whatever it is, it is this row's alone
            _row_failed(row, e)
            continue
        keep.append(j)
    return keep


def _row_failed(row: Row, error: BaseException) -> None:
    try:
        row.on_error(error)
    except Exception:  # noqa: BLE001 - reporting the failure failed too: the other rows still go on
        log.exception("reporting a failed row failed")


def pick_rows(logits, temperatures, top_ps, generator):
    """:func:`pick_next` for the whole batch: (tokens, {row index: exception}). When the batch's draw
    fails (a row whose settings or logits cannot be sampled), rows are drawn one by one so that only
    the rows that fail do; their token is a placeholder, never shown."""
    import torch

    try:
        return pick_next(logits, temperatures, top_ps, generator), {}
    except Exception:  # noqa: BLE001 - which row failed is found below, row by row
        tokens, errors = [], {}
        for j in range(logits.shape[0]):
            try:
                tokens.append(pick_next(logits[j:j + 1], temperatures[j:j + 1], top_ps[j:j + 1], generator))
            except Exception as e:  # noqa: BLE001
                errors[j] = e
                tokens.append(torch.zeros(1, dtype=torch.long, device=logits.device))
        return torch.cat(tokens), errors


def cache_keyword(model) -> str:
    """The forward keyword that takes the KV cache. Current transformers call it ``cache`` (and warn
    on ``past_key_values``); older versions and remote-code models know only ``past_key_values``, and
    PEFT prompt learning sets ``past_key_values`` itself (it would clash with ``cache``)."""
    import inspect

    configs = getattr(model, "peft_config", None) or {}
    if any(getattr(c, "is_prompt_learning", False) for c in configs.values()):
        return "past_key_values"
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        parameters = inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def returned_cache(out):
    """The KV cache a forward returned, under its current name (``cache``) or its old one."""
    for key in ("cache", "past_key_values"):
        if key in out:
            return out[key]
    return None


class _FeedStreams:
    """transformers stopping criterion: hands each row's new token to its stream and stops the rows
    whose answer is over, so the text and the decision to stop come from the same code."""

    def __init__(self, streams: list[TextStream]):
        self.streams = streams

    def __call__(self, input_ids, scores=None, **kwargs):
        import torch

        for stream, token in zip(self.streams, input_ids[:, -1].tolist()):
            stream.push(token)
        return torch.tensor([s.done for s in self.streams], dtype=torch.bool, device=input_ids.device)


class Engine:
    def __init__(self, model, tokenizer):
        from instructglm.tokenize.tokenize import SegmentEncoder

        self.model, self.tokenizer = model, tokenizer
        self.encoder = SegmentEncoder(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.cache_key = cache_keyword(model)

    def forward(self, ids, mask, pos, cache, **extra):
        """One forward over ``ids`` with the KV cache ``cache`` (None: a new one); (last logits, cache)."""
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                         **{self.cache_key: cache}, **extra)
        return out.logits[:, -1, :], returned_cache(out)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def context_length(self) -> int:
        config = getattr(self.model, "config", None)
        return int(getattr(config, "max_position_embeddings", None) or DEFAULT_CONTEXT)

    # ------------------------------------------------------------------------------- prompts
    def prompts_ids(self, template, conversations: list) -> list[list[int]]:
        """The prompt ids of many conversations (lists of messages), with one tokenizer call."""
        return [ids for ids, _ in self.encoder.encode([template.prompt(m) for m in conversations])]

    def prompt_ids(self, template, messages: list) -> list[int]:
        return self.prompts_ids(template, [messages])[0]

    def text_ids(self, text: str) -> list[int]:
        """A raw text prompt (no template), encoded as a prompt segment."""
        from instructglm.templates import Segment

        (ids, _), = self.encoder.encode([[Segment(text, False)]])
        return ids

    # ---------------------------------------------------------------------------- generation
    def generate(self, prompts: list[list[int]], sampling: SamplingConfig, stops=(), strip: bool = True,
                 on_text: Callable[[int, str], None] | None = None) -> list[str]:
        """The answer to each prompt (one batch); ``on_text(row, piece)`` sees the text as it comes.

        An answer ends at EOS, at the first of ``stops`` (not included) or after
        ``sampling.max_new_tokens``; with ``strip`` it has no surrounding whitespace.
        """
        import torch
        from transformers import StoppingCriteriaList

        streams = [TextStream(self.tokenizer, stops, strip, self.eos, sampling.max_new_tokens,
                              on_text=None if on_text is None else (lambda piece, i=i: on_text(i, piece)))
                   for i in range(len(prompts))]
        ids, mask = left_pad(prompts, self.pad)
        with torch.inference_mode():
            self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                eos_token_id=self.eos, pad_token_id=self.pad, **sampling.generate_options(),
                                stopping_criteria=StoppingCriteriaList([_FeedStreams(streams)]))
        for stream in streams:
            stream.finish()
        return [s.text for s in streams]

    def decode(self, rows: list[Row], generator, handing=None) -> None:
        """Generate every row step by step over one KV cache (greedy or temperature/top-p sampled per
        row, drawn from ``generator``); a finished or cancelled row leaves the batch at once.
        ``handing()``: a context around each step's hand-out of tokens (``serve`` sends the step's text in one go)."""
        import contextlib

        import torch

        device = self.device
        ids, mask = left_pad([r.prompt_ids for r in rows], self.pad)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        temps = torch.tensor([r.sampling.temperature for r in rows], dtype=torch.float32, device=device)
        top_ps = torch.tensor([r.sampling.top_p for r in rows], dtype=torch.float32, device=device)
        ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
        cache = None
        live = list(rows)
        with torch.inference_mode():
            while live:
                logits, cache = self.forward(ids, mask, pos, cache)
                picked, errors = pick_rows(logits, temps, top_ps, generator)
                tokens = picked.tolist()
                with (handing or contextlib.nullcontext)():
                    keep = hand_out(live, tokens, errors)
                if not keep:
                    break
                if len(keep) < len(live):
                    index = torch.tensor(keep, dtype=torch.long, device=device)
                    cache.batch_select_indices(index)
                    mask, pos, temps, top_ps = mask[index], pos[index], temps[index], top_ps[index]
                    tokens = [tokens[j] for j in keep]
                    live = [live[j] for j in keep]
                ids = torch.tensor(tokens, dtype=torch.long, device=device)[:, None]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                pos = pos[:, -1:] + 1
