"""``infer``: batched generation over a data file, optionally with the adapter switched off too.

Prompts are rendered with the same template code as training (the adapter's run info says which
template it was trained with, and a different ``--template`` is refused). Rows are sorted by
length and left-padded so a batch wastes little; answers are the generated text only, cut at EOS
and at the template's next turn marker.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from instructglm.config import opt
from instructglm.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class InferConfig:
    data: str = opt(help="data file: canonical JSONL or any format 'convert' reads")
    output: str = opt(help="predictions JSONL", aliases=("-o",))
    model: str = opt("gemma3-270m", help="base model")
    adapter: str | None = opt(None, help="trained output directory (from 'instructglm train')")
    template: str | None = opt(None, help="prompt template; default: the adapter's, else alpaca")
    max_new_tokens: int = opt(128, help="tokens to generate per answer")
    batch_size: int = opt(16, help="prompts per generation batch")
    temperature: float = opt(0.0, help="0 = greedy decoding")
    top_p: float = opt(1.0, help="nucleus sampling (with temperature > 0)")
    compare_base: bool = opt(False, help="also generate with the adapter disabled (same loaded weights)")
    limit: int | None = opt(None, help="only the first N records")
    seed: int = opt(0, help="sampling seed")


def run_info(adapter: str | None) -> dict:
    from instructglm.train.trainer import RUN_INFO

    if not adapter:
        return {}
    path = Path(adapter)
    if not path.is_dir():
        raise UserError(f"--adapter {adapter}: directory not found")
    info = path / RUN_INFO
    return json.loads(info.read_text()) if info.is_file() else {}


def choose_template(requested: str | None, info: dict) -> str:
    trained = info.get("template")
    if requested and trained and requested != trained:
        raise UserError(f"--template {requested}: the adapter was trained with template '{trained}'; "
                        f"prompting it another way silently degrades answers")
    return requested or trained or "alpaca"


def load_for_inference(model: str, adapter: str | None, trust_remote_code: bool = False):
    """(model, tokenizer, base_path) with the trained weights of ``adapter`` attached, in eval mode."""
    from instructglm.models import load_model, load_tokenizer, resolve_model
    from instructglm.train.methods import get_method

    path = resolve_model(model)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    loaded = load_model(path, trust_remote_code=trust_remote_code)
    if adapter:
        loaded = get_method(run_info(adapter).get("method", "lora")).attach(loaded, adapter)
    loaded.eval()
    return loaded, tokenizer, path


class Generator:
    """Greedy or sampled batched generation with one template."""

    def __init__(self, model, tokenizer, template, max_new_tokens=128, temperature=0.0, top_p=1.0):
        from instructglm.data.tokenize import SegmentEncoder

        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.encoder = SegmentEncoder(tokenizer)
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        (ids, _), = self.encoder.encode([self.template.prompt(messages)])
        return ids

    def generate(self, prompts: list[list[int]]) -> list[str]:
        import torch

        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding: every prompt ends where generation starts
            ids[i, width - len(p):] = torch.as_tensor(p)
            mask[i, width - len(p):] = 1
        device = next(self.model.parameters()).device
        kwargs = dict(max_new_tokens=self.max_new_tokens, eos_token_id=self.tokenizer.eos_token_id,
                      pad_token_id=pad)
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        texts = self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        return [self.template.cut(t) for t in texts]


def infer(cfg: InferConfig) -> dict:
    """Generate an answer for every record of ``cfg.data``; write ``cfg.output`` (JSONL)."""
    import torch
    from tqdm.auto import tqdm

    from instructglm.data.convert import iter_converted
    from instructglm.data.records import write_jsonl
    from instructglm.data.templates import get_template

    info = run_info(cfg.adapter)
    template = get_template(choose_template(cfg.template, info))
    records = []
    for rec in iter_converted(Path(cfg.data)):
        records.append(rec)
        if cfg.limit and len(records) >= cfg.limit:
            break
    if not records:
        raise UserError(f"{cfg.data}: no records")
    if cfg.compare_base and not cfg.adapter:
        raise UserError("--compare-base needs --adapter")
    model, tokenizer, base_path = load_for_inference(cfg.model, cfg.adapter)
    base_model = None
    if cfg.compare_base and not hasattr(model, "disable_adapter"):
        from instructglm.models import load_model

        base_model = load_model(base_path).eval()  # freeze/full changed the weights themselves
    torch.manual_seed(cfg.seed)
    gen = Generator(model, tokenizer, template, cfg.max_new_tokens, cfg.temperature, cfg.top_p)
    prompts = [gen.prompt_ids(r["messages"]) for r in records]
    order = sorted(range(len(records)), key=lambda i: len(prompts[i]))
    answers: dict[str, list[str | None]] = {"prediction": [None] * len(records)}
    if cfg.compare_base:
        answers["base_prediction"] = [None] * len(records)
    bar = tqdm(total=len(records) * len(answers), desc="generate", unit=" answers", disable=None)
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        batch = [prompts[i] for i in idx]
        for key in answers:
            if key == "base_prediction" and base_model is not None:
                texts = Generator(base_model, tokenizer, template, cfg.max_new_tokens, cfg.temperature,
                                  cfg.top_p).generate(batch)
            elif key == "base_prediction":
                with model.disable_adapter():
                    texts = gen.generate(batch)
            else:
                texts = gen.generate(batch)
            for i, t in zip(idx, texts):
                answers[key][i] = t
            bar.update(len(idx))
    bar.close()

    def rows():
        for i, rec in enumerate(records):
            messages = rec["messages"]
            row = {"index": i, "prompt": tokenizer.decode(prompts[i], skip_special_tokens=True),
                   "reference": messages[-1]["content"] if messages[-1]["role"] == "assistant" else None}
            for key, values in answers.items():
                row[key] = values[i]
            for k, v in rec.items():
                if k not in ("messages", "index"):
                    row.setdefault(k, v)
            yield row

    n = write_jsonl(cfg.output, rows())
    return {"output": cfg.output, "records": n, "template": template.name}
