"""How the next token is chosen: the sampling options every generating command shares, and their checks.

:class:`SamplingConfig` is both the engine's per-generation setting and the option group that
``infer`` and ``chat`` inherit their ``--temperature``/``--top-p``/... flags from (the config layer
is flat, so the group is a base class). Ranges are checked once, here: the command line reports a
bad value as ``--top-p: ...``, ``serve`` as a 400 naming the request field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from instructglm.config import SEED, check_numbers, opt
from instructglm.errors import UserError

FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32: a smaller top_p is 0 where sampling runs
MIN_TEMPERATURE = 1e-5  # a smaller temperature samples as this one (the logits would overflow float32)


class SamplingError(UserError):
    """A sampling option out of range; ``field`` names it, ``problem`` says what is wrong."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"--{field.replace('_', '-')}: {problem}")
        self.field, self.problem = field, problem


@dataclass
class SamplingConfig:
    """The ranges (checked by the config layer, :func:`instructglm.config.number_problem`, also when
    ``serve`` builds one per request): every number finite; ``top_p`` in [FLOAT32_TINY, 1] since
    sampling runs in float32 and a smaller top_p would be 0 there, leaving nothing to draw."""

    max_new_tokens: int = opt(128, help="tokens to generate per answer", min=1)
    temperature: float = opt(0.0, help="0 = greedy decoding; > 0 samples", min=0, max=100)
    top_p: float = opt(1.0, help="nucleus sampling (with temperature > 0)", min=FLOAT32_TINY, max=1)
    top_k: int = opt(0, help="sample from the k most likely tokens (with temperature > 0); 0 = off", min=0)
    repetition_penalty: float = opt(1.0, help="> 1 discourages repeating tokens (greedy or sampled)", above=0)
    seed: int = opt(0, help="sampling seed", **SEED)

    def __post_init__(self) -> None:
        self.check_sampling()

    def check_sampling(self) -> None:
        # SamplingConfig's own declarations, also for a command config that redeclares a field (chat)
        check_numbers(self, SamplingError, SamplingConfig)

    def sampling(self) -> "SamplingConfig":
        """Just the sampling options (of a command config that inherits them)."""
        return SamplingConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SamplingConfig)})

    def generate_options(self) -> dict:
        """These options as transformers' ``generate`` keywords."""
        if self.temperature > 0:
            options = dict(do_sample=True, temperature=max(self.temperature, MIN_TEMPERATURE), top_p=self.top_p,
                           top_k=self.top_k)
        else:  # a model's generation_config may hold sampling defaults: switch them off explicitly
            options = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.repetition_penalty != 1.0:
            options["repetition_penalty"] = self.repetition_penalty
        return dict(max_new_tokens=self.max_new_tokens, **options)


def pick_next(logits, temperatures, top_ps, generator):
    """The next token of every row of ``logits`` (rows x vocabulary): greedy where the row's
    temperature is 0, else drawn with that temperature from its nucleus ``top_p``."""
    import torch

    greedy = logits.argmax(-1)
    sampled = temperatures > 0
    if not bool(sampled.any()):
        return greedy
    probs = torch.softmax(logits.float() / temperatures.clamp(min=MIN_TEMPERATURE)[:, None], dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    outside = (sorted_p.cumsum(-1) - sorted_p) >= top_ps[:, None]  # the most likely token always stays
    sorted_p = sorted_p.masked_fill(outside, 0.0)
    choice = torch.multinomial(sorted_p.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)
    drawn = order.gather(-1, choice[:, None]).squeeze(-1)
    return torch.where(sampled, drawn, greedy)
