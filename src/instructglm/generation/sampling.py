"""How the next token is chosen: the sampling options every generating command shares, and their checks.

:class:`SamplingConfig` is both the engine's per-generation setting and the option group that
``infer`` and ``chat`` inherit their ``--temperature``/``--top-p``/... flags from (the config layer
is flat, so the group is a base class). Ranges are checked once, here: the command line reports a
bad value as ``--top-p: ...``, ``serve`` as a 400 naming the request field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from instructglm.config import opt
from instructglm.errors import UserError


class SamplingError(UserError):
    """A sampling option out of range; ``field`` names it, ``problem`` says what is wrong."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"--{field.replace('_', '-')}: {problem}")
        self.field, self.problem = field, problem


@dataclass
class SamplingConfig:
    max_new_tokens: int = opt(128, help="tokens to generate per answer")
    temperature: float = opt(0.0, help="0 = greedy decoding; > 0 samples")
    top_p: float = opt(1.0, help="nucleus sampling (with temperature > 0)")
    top_k: int = opt(0, help="sample from the k most likely tokens (with temperature > 0); 0 = off")
    repetition_penalty: float = opt(1.0, help="> 1 discourages repeating tokens (greedy or sampled)")
    seed: int = opt(0, help="sampling seed")

    def __post_init__(self) -> None:
        self.check_sampling()

    def check_sampling(self) -> None:
        # written as "not (in range)" so that NaN (which JSON bodies may carry) is refused too
        if not self.max_new_tokens >= 1:
            raise SamplingError("max_new_tokens", f"must be at least 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise SamplingError("temperature", f"must be 0 (greedy) or positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SamplingError("top_p", f"must be in (0, 1], got {self.top_p}")
        if not self.top_k >= 0:
            raise SamplingError("top_k", f"must be 0 (off) or positive, got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise SamplingError("repetition_penalty", f"must be positive, got {self.repetition_penalty}")

    def sampling(self) -> "SamplingConfig":
        """Just the sampling options (of a command config that inherits them)."""
        return SamplingConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SamplingConfig)})

    def generate_options(self) -> dict:
        """These options as transformers' ``generate`` keywords."""
        if self.temperature > 0:
            options = dict(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
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
    probs = torch.softmax(logits.float() / temperatures.clamp(min=1e-5)[:, None], dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    outside = (sorted_p.cumsum(-1) - sorted_p) >= top_ps[:, None]  # the most likely token always stays
    sorted_p = sorted_p.masked_fill(outside, 0.0)
    choice = torch.multinomial(sorted_p.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)
    drawn = order.gather(-1, choice[:, None]).squeeze(-1)
    return torch.where(sampled, drawn, greedy)
