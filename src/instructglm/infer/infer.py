"""``infer``: batched generation over a data file, optionally with the adapter switched off too.

Prompts are rendered with the same template code as training (the adapter's run info says which
template it was trained with, and a different ``--template`` is refused). Rows are sorted by
length and left-padded so a batch wastes little; answers are the generated text only: generation
stops at EOS or as soon as the template's next turn marker appears, and the answer is cut there.

Records without a reference (a conversation that ends with the user's turn, an Alpaca record with
no ``output``) are accepted and written with ``reference: null``.

With several ``--adapter NAME=PATH`` the adapters are loaded once, side by side on one base model,
and every row gets one ``prediction_NAME`` column per adapter (``model.set_adapter`` switches
between them); ``--compare-base`` adds ``base_prediction`` (adapters disabled, same weights).

Finished rows are appended to ``OUTPUT.partial`` (one JSON line per row, flushed after every
batch, after a first line that records the settings); rerunning the same command after an
interruption skips them. At the end the rows are written in input order to ``OUTPUT`` (atomically)
and the partial file is removed.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

from instructglm.config import opt
from instructglm.files import file_sha256
from instructglm.errors import UserError, where
from instructglm.models.adapters import adapter_info

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
# Stands in for a missing reference while a record goes through the converters (which require one).
NO_REFERENCE = "\x00instructglm:no-reference\x00"


@dataclass
class InferConfig:
    data: str = opt(help="data file: canonical JSONL or any format 'convert' reads; records need no reference")
    output: str = opt(help="predictions JSONL (rows are kept in OUTPUT.partial until the run completes; "
                           "rerunning resumes from it)", aliases=("-o",))
    model: str = opt("gemma3-270m", help="base model")
    adapter: list[str] = opt([], help="trained output directory (from 'instructglm train'); give NAME=PATH "
                                      "several times to write one prediction_NAME column per adapter")
    template: str | None = opt(None, help="prompt template; default: the adapter's, else alpaca")
    format: str = opt("auto", help="data format (as in 'convert'): auto or a format name")
    max_new_tokens: int = opt(128, help="tokens to generate per answer")
    batch_size: int = opt(16, help="prompts per generation batch")
    temperature: float = opt(0.0, help="0 = greedy decoding; > 0 samples")
    top_p: float = opt(1.0, help="nucleus sampling (with temperature > 0)")
    top_k: int = opt(0, help="sample from the k most likely tokens (with temperature > 0); 0 = off")
    repetition_penalty: float = opt(1.0, help="> 1 discourages repeating tokens (greedy or sampled)")
    compare_base: bool = opt(False, help="also generate with the adapter disabled (same loaded weights)")
    limit: int | None = opt(None, help="only the first N records")
    seed: int = opt(0, help="sampling seed")

    def validate(self) -> None:
        check_sampling(self)
        if self.batch_size < 1:
            raise UserError(f"--batch-size: must be at least 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit: must be at least 1, got {self.limit}")


def check_sampling(cfg) -> None:
    """The generation options shared by ``infer`` and ``chat``, checked with the flag named."""
    if cfg.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens: must be at least 1, got {cfg.max_new_tokens}")
    if cfg.temperature < 0:
        raise UserError(f"--temperature: must be 0 (greedy) or positive, got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        raise UserError(f"--top-p: must be in (0, 1], got {cfg.top_p}")
    if cfg.top_k < 0:
        raise UserError(f"--top-k: must be 0 (off) or positive, got {cfg.top_k}")
    if cfg.repetition_penalty <= 0:
        raise UserError(f"--repetition-penalty: must be positive, got {cfg.repetition_penalty}")


def choose_template(requested: str | None, info: dict) -> str:
    trained = info.get("template")
    if requested and trained and requested != trained:
        raise UserError(f"--template {requested}: the adapter was trained with template '{trained}'; "
                        f"prompting it another way silently degrades answers")
    return requested or trained or "alpaca"


def common_run_info(adapters: dict[str, str]) -> dict:
    """The run info of the adapters; all of them must have been trained with one template."""
    infos = {name: adapter_info(path) for name, path in adapters.items()}
    trained = {name: i["template"] for name, i in infos.items() if i.get("template")}
    if len(set(trained.values())) > 1:
        listed = ", ".join(f"{n}: {t}" for n, t in trained.items())
        raise UserError(f"--adapter: the adapters were trained with different templates ({listed}); "
                        f"run infer once per template")
    return next((i for i in infos.values() if i.get("template")), {})


# --------------------------------------------------------------------------- stopping


class StopOnMarkers:
    """Stopping criterion (transformers' ``StoppingCriteria`` protocol: a callable returning one bool
    per row): a row is done once its generated text contains one of ``markers``.

    Only the last few generated tokens are decoded at each step (enough to hold the longest
    marker), so the check costs little next to a forward pass.
    """

    def __init__(self, tokenizer, markers, start: int):
        self.tokenizer, self.markers, self.start = tokenizer, tuple(m for m in markers if m), start
        self.window = max((len(m) for m in self.markers), default=0) + 2

    def __call__(self, input_ids, scores=None, **kwargs):
        import torch

        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if not self.markers or input_ids.shape[1] <= self.start:
            return done
        tail = input_ids[:, max(self.start, input_ids.shape[1] - self.window):]
        texts = self.tokenizer.batch_decode(tail, skip_special_tokens=False)
        for i, text in enumerate(texts):
            done[i] = any(m in text for m in self.markers)
        return done


class StopWhenSet:
    """Stopping criterion: every row is done once ``event`` is set (chat: Ctrl-C stops the answer)."""

    def __init__(self, event):
        self.event = event

    def __call__(self, input_ids, scores=None, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


# --------------------------------------------------------------------------- generation


class Generator:
    """Greedy or sampled batched generation with one template."""

    def __init__(self, model, tokenizer, template, max_new_tokens=128, temperature=0.0, top_p=1.0, top_k=0,
                 repetition_penalty=1.0):
        from instructglm.tokenize.tokenize import SegmentEncoder

        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.encoder = SegmentEncoder(tokenizer)
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.top_k, self.repetition_penalty = top_k, repetition_penalty

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        (ids, _), = self.encoder.encode([self.template.prompt(messages)])
        return ids

    def prompts_ids(self, conversations: list[list[dict]]) -> list[list[int]]:
        """:meth:`prompt_ids` of many conversations, with one tokenizer call."""
        return [ids for ids, _ in self.encoder.encode([self.template.prompt(m) for m in conversations])]

    def generate_kwargs(self, start: int, extra_stops=()) -> dict:
        """``model.generate`` options: sampling settings, EOS/pad, and stopping at the template's turn
        markers in the tokens after position ``start`` (where the prompts end)."""
        from transformers import StoppingCriteriaList

        kwargs: dict[str, Any] = dict(max_new_tokens=self.max_new_tokens, eos_token_id=self.tokenizer.eos_token_id,
                                      pad_token_id=self.tokenizer.pad_token_id)
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or 0)
        else:  # the model's generation_config may hold sampling defaults: switch them off explicitly
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = self.repetition_penalty
        criteria = [StopOnMarkers(self.tokenizer, self.template.stop, start), *extra_stops]
        kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
        return kwargs

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
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                      **self.generate_kwargs(width))
        texts = self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        return [self.template.cut(t) for t in texts]


# --------------------------------------------------------------------------- reading records


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


# (prompt field, reference field) of the prompt/response formats, in the converters' priority order
_REPLY_FIELDS = (("instruction", "output"), ("prompt", "response"), ("content", "summary"),
                 ("context", "target"), ("input", "target"))


def with_placeholder_reply(rec: Any) -> Any:
    """``rec`` with :data:`NO_REFERENCE` where its reply is missing or empty, so that the converters,
    which require a reply, accept it; ``rec`` itself when it has a reply or is not understood."""
    from instructglm.convert.convert import SPEAKERS, TOOL_SPEAKERS

    if not isinstance(rec, dict):
        return rec
    messages = rec.get("messages")
    if isinstance(messages, list):
        last = messages[-1] if messages else None
        if not isinstance(last, dict):
            return rec
        if last.get("role") != "assistant":
            return {**rec, "messages": [*messages, {"role": "assistant", "content": NO_REFERENCE}]}
        if _blank(last.get("content")) and not (last.get("tool_calls") or last.get("function_call")):
            return {**rec, "messages": [*messages[:-1], {**last, "content": NO_REFERENCE}]}
        return rec
    for key in ("conversations", "conversation"):
        turns = rec.get(key)
        if not isinstance(turns, list) or not turns or not isinstance(turns[-1], dict):
            continue
        last = turns[-1]
        if key == "conversation":  # firefly: [{"human", "assistant"}, ...]
            return {**rec, key: [*turns[:-1], {**last, "assistant": NO_REFERENCE}]} if _blank(
                last.get("assistant")) else rec
        speaker = last.get("from")
        side = SPEAKERS.get(speaker) or TOOL_SPEAKERS.get(speaker, (None,))[0]
        if side in ("user", "system"):
            reply = "assistant" if any(isinstance(t, dict) and t.get("from") == "assistant" for t in turns) else "gpt"
            return {**rec, key: [*turns, {"from": reply, "value": NO_REFERENCE}]}
        if side == "assistant" and speaker in SPEAKERS and _blank(last.get("value")):
            return {**rec, key: [*turns[:-1], {**last, "value": NO_REFERENCE}]}
        return rec
    text = rec.get("text")
    if isinstance(text, str) and "### Instruction:" in text:  # the seeds' text format
        at = text.rfind("### Response:")
        if at < 0:
            return {**rec, "text": text.rstrip() + "\n\n### Response:\n" + NO_REFERENCE}
        if text[at + len("### Response:"):].strip() in ("", "END"):
            return {**rec, "text": text[:at] + "### Response:\n" + NO_REFERENCE}
        return rec
    for prompt, reply in _REPLY_FIELDS:
        if prompt in rec:
            return {**rec, reply: NO_REFERENCE} if _blank(rec.get(reply)) else rec
    return rec


def read_records(path: str | Path, fmt_name: str = "auto", limit: int | None = None) -> list[dict]:
    """Canonical records from a data file in any format ``convert`` reads, replies optional.

    A record without a reply ends with the user's turn here (``messages[-1]`` is the user's); a
    malformed record is a :class:`UserError` with ``FILE:LINE`` as in ``convert``.
    """
    from instructglm.convert.convert import DETECT_SAMPLES, _convert_items, detect_format, resolve_format
    from instructglm.convert.sources import BadInput, scan_records

    path = Path(path)
    items = ((line, with_placeholder_reply(x)) for line, x in scan_records(path))
    fmt = resolve_format(fmt_name)
    if fmt is None:
        buffered: list = []
        for item in items:
            buffered.append(item)
            if sum(not isinstance(x, BadInput) for _, x in buffered) >= DETECT_SAMPLES or len(buffered) >= 64:
                break
        samples = [x for _, x in buffered if not isinstance(x, BadInput)]
        if not samples and buffered:
            line, bad = buffered[0]
            raise UserError(f"{where(path, line)}: {bad.reason}")
        fmt = detect_format(path, samples)
        items = chain(buffered, items)
    records = []
    for rec, _ in _convert_items(path, fmt, items, None):
        messages = rec["messages"]
        if messages[-1]["role"] == "assistant" and messages[-1]["content"] == NO_REFERENCE:
            rec["messages"] = messages[:-1]
        records.append(rec)
        if limit and len(records) >= limit:
            break
    if not records:
        raise UserError(f"{path}: no records")
    return records


def reference(messages: list[dict]) -> str | None:
    return messages[-1]["content"] if messages[-1]["role"] == "assistant" else None


# --------------------------------------------------------------------------- resuming


def partial_path(output: str | Path) -> Path:
    return Path(str(output) + PARTIAL_SUFFIX)


def read_partial(path: Path, settings: dict) -> dict[int, dict]:
    """Rows already finished by an interrupted run with the same ``settings``, by index.

    A torn last line (the run died while writing it) is dropped and the file rewritten without it.
    """
    from instructglm.files import atomic_file as AtomicWriter

    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        return {}
    try:
        header = json.loads(lines[0]).get("resume")
    except (json.JSONDecodeError, AttributeError):
        header = None
    if not isinstance(header, dict):
        raise UserError(f"{path}: not a partial predictions file of 'instructglm infer'; delete it or choose "
                        f"another output")
    for key, value in settings.items():
        if header.get(key) != value:
            raise UserError(f"{path}: left by an interrupted run with other settings ({key}: {header.get(key)!r}, "
                            f"now {value!r}); rerun with those settings to resume, or delete the file to start over")
    rows: dict[int, dict] = {}
    good = 1
    for n, line in enumerate(lines[1:], start=2):
        try:
            row = json.loads(line)
            rows[int(row["index"])] = row
            good = n
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            if n != len(lines):
                raise UserError(f"{where(path, n)}: unreadable row in a partial predictions file; "
                                f"delete the file to start over") from None
            log.warning("%s: dropping a torn last line", path)
            with AtomicWriter(path) as f:
                f.write("\n".join(lines[:good]) + "\n")
    return rows


# --------------------------------------------------------------------------- infer


def infer(cfg: InferConfig) -> dict:
    """Generate an answer for every record of ``cfg.data``; write ``cfg.output`` (JSONL)."""
    import torch
    from tqdm.auto import tqdm

    from instructglm.files import write_jsonl
    from instructglm.templates import get_template
    from instructglm.models.adapters import load_with_adapters, parse_adapters
    from instructglm.models.loading import load_model, resolve_model

    check_sampling(cfg)
    adapters = parse_adapters(cfg.adapter)
    if cfg.compare_base and not adapters:
        raise UserError("--compare-base needs --adapter")
    info = common_run_info(adapters)
    template_name = choose_template(cfg.template, info)
    records = read_records(cfg.data, cfg.format, cfg.limit)
    output = Path(cfg.output)
    if output.is_dir():
        raise UserError(f"{output}: is a directory; give a file name for the output")

    if len(adapters) > 1:
        columns = [(f"prediction_{name}", name) for name in adapters]
    else:
        columns = [("prediction", next(iter(adapters), None))]
    if cfg.compare_base:
        columns.append(("base_prediction", None))
    settings = {"data_sha256": file_sha256(cfg.data), "model": cfg.model,
                "adapters": {n: str(Path(p).resolve()) for n, p in adapters.items()}, "template": template_name,
                "columns": [c for c, _ in columns], "max_new_tokens": cfg.max_new_tokens,
                "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
                "repetition_penalty": cfg.repetition_penalty, "seed": cfg.seed}
    partial = partial_path(output)
    done = read_partial(partial, settings) if partial.is_file() else {}
    done = {i: row for i, row in done.items() if i < len(records)}
    if done:
        log.info("resuming from %s: %d of %d rows already done", partial, len(done), len(records))

    model, tokenizer, names = load_with_adapters(cfg.model, adapters)
    template = get_template(template_name, tokenizer)
    base_model = None
    if cfg.compare_base and not hasattr(model, "disable_adapter"):
        base_model = load_model(resolve_model(cfg.model)).eval()  # freeze/full changed the weights themselves
    torch.manual_seed(cfg.seed)
    options = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                   top_k=cfg.top_k, repetition_penalty=cfg.repetition_penalty)
    gen = Generator(model, tokenizer, template, **options)
    base_gen = Generator(base_model, tokenizer, template, **options) if base_model is not None else None
    prompts = gen.prompts_ids([r["messages"] for r in records])
    todo = sorted((i for i in range(len(records)) if i not in done), key=lambda i: len(prompts[i]))

    def make_row(i: int, answers: dict[str, str]) -> dict:
        rec = records[i]
        row = {"index": i, "prompt": tokenizer.decode(prompts[i], skip_special_tokens=True),
               "reference": reference(rec["messages"]), **answers}
        for k, v in rec.items():
            if k not in ("messages", "index"):
                row.setdefault(k, v)
        return row

    def run(key: str, adapter: str | None, batch: list[list[int]]) -> list[str]:
        if key == "base_prediction":
            if base_gen is not None:
                return base_gen.generate(batch)
            with model.disable_adapter():
                return gen.generate(batch)
        if adapter is not None and len(names) > 1:
            model.set_adapter(adapter)
        return gen.generate(batch)

    bar = tqdm(total=len(records) * len(columns), initial=len(done) * len(columns), desc="generate",
               unit=" answers", disable=None)
    fresh = not partial.is_file() or partial.stat().st_size == 0
    with open(partial, "a", encoding="utf-8") as part:
        if fresh:
            part.write(json.dumps({"resume": settings}, ensure_ascii=False) + "\n")
        for start in range(0, len(todo), cfg.batch_size):
            idx = todo[start:start + cfg.batch_size]
            batch = [prompts[i] for i in idx]
            answers: dict[int, dict[str, str]] = {i: {} for i in idx}
            for key, adapter in columns:
                for i, text in zip(idx, run(key, adapter, batch)):
                    answers[i][key] = text
                bar.update(len(idx))
            for i in idx:
                done[i] = make_row(i, answers[i])
                part.write(json.dumps(done[i], ensure_ascii=False) + "\n")
            part.flush()
            os.fsync(part.fileno())
    bar.close()
    n = write_jsonl(output, (done[i] for i in range(len(records))))
    partial.unlink()
    return {"output": cfg.output, "records": n, "template": template.name, "columns": [c for c, _ in columns],
            "resumed": len(records) - len(todo), "generated": len(todo)}

