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

Without ``--output`` (ChatGLM-Tuning's ``infer --data_path FILE --model_path RUN``) the predictions go
to ``ADAPTER/predictions.jsonl``, where ``report RUN`` finds them, and every instruction is printed
with its answer; the base model is the one the adapter was trained on unless ``--model`` says otherwise.

Finished rows are appended to ``OUTPUT.partial`` (one JSON line per row, flushed after every
batch, after a first line that records the settings); rerunning the same command after an
interruption skips them. At the end the rows are written in input order to ``OUTPUT`` (atomically)
and the partial file is removed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from instructglm.config import opt
from instructglm.convert import read_conversations
from instructglm.convert.reading import column_map
from instructglm.errors import UserError, where
from instructglm.files import atomic_file, dumps, file_sha256, write_error, write_jsonl
from instructglm.generation.engine import Engine
from instructglm.generation.loading import Loaded, choose_adapters, load_engine
from instructglm.generation.sampling import SamplingConfig
from instructglm.paths import output_file, refuse_inputs
from instructglm.record import Conversation

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"


@dataclass(kw_only=True)
class InferConfig(SamplingConfig):
    data: str = opt(help="data file: canonical JSONL or any format 'convert' reads; records need no reference",
                    aliases=("--data_path",))
    output: str | None = opt(None, help="predictions JSONL (rows are kept in OUTPUT.partial until the run "
                                        "completes; rerunning resumes from it); default: ADAPTER/predictions.jsonl, "
                                        "and every answer is printed", aliases=("-o",))
    model: str | None = opt(None, help="base model; default: the one the adapter was trained on, else gemma3-270m")
    adapter: list[str] = opt([], help="trained output directory (from 'instructglm train'); give NAME=PATH "
                                      "several times to write one prediction_NAME column per adapter",
                             aliases=("--model_path",))
    template: str | None = opt(None, help="prompt template; default: the adapter's, else alpaca")
    format: str = opt("auto", help="data format (as in 'convert'): auto or a format name")
    map: list[str] = opt([], help="read a layout no format lists, as 'convert --map': FIELD=KEY, e.g. "
                                  "--map instruction=question --map output=std_answer (the reply's key may be absent)")
    batch_size: int = opt(16, help="prompts per generation batch", min=1)
    compare_base: bool = opt(False, help="also generate with the adapter disabled (same loaded weights)")
    limit: int | None = opt(None, help="only the first N records", min=1)

    def validate(self) -> None:
        if self.output is None and not self.adapter:
            raise UserError("--output: required without --adapter (the predictions are written next to an adapter)")
        if self.batch_size < 1:
            raise UserError(f"--batch-size: must be at least 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit: must be at least 1, got {self.limit}")
        column_map(self.map, self.format)


@dataclass(frozen=True)
class Column:
    """One prediction column: which adapter answers (None: the only one, or none), or the base model."""

    key: str
    adapter: str | None = None
    base: bool = False


def prediction_columns(adapters: dict[str, str], compare_base: bool) -> list[Column]:
    if len(adapters) > 1:
        columns = [Column(f"prediction_{name}", name) for name in adapters]
    else:
        columns = [Column("prediction", next(iter(adapters), None))]
    if compare_base:
        columns.append(Column("base_prediction", base=True))
    return columns


# --------------------------------------------------------------------------- resuming


def partial_path(output: str | Path) -> Path:
    return Path(str(output) + PARTIAL_SUFFIX)


def read_partial(path: Path, settings: dict) -> dict[int, dict]:
    """Rows already finished by an interrupted run with the same ``settings``, by index.

    A torn last line (the run died while writing it) is dropped and the file rewritten without it.
    """
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
            with atomic_file(path) as f:
                f.write("\n".join(lines[:good]) + "\n")
    return rows


# --------------------------------------------------------------------------- infer


def run_settings(cfg: InferConfig, adapters: dict[str, str], template_name: str, columns: list[Column]) -> dict:
    """What the answers depend on: an interrupted run resumes only with the same settings."""
    return {"data_sha256": file_sha256(cfg.data), "model": cfg.model,
            "adapters": {n: str(Path(p).resolve()) for n, p in adapters.items()}, "template": template_name,
            "columns": [c.key for c in columns], **({"map": cfg.map} if cfg.map else {}),
            **dataclasses.asdict(cfg.sampling())}


class Answerer:
    """Answers a batch of prompts for each column: switches adapters, or turns them off for the base."""

    def __init__(self, loaded: Loaded, sampling: SamplingConfig, separate_base: Engine | None = None):
        self.loaded, self.sampling, self.separate_base = loaded, sampling, separate_base

    def answer(self, column: Column, prompts: list[list[int]]) -> list[str]:
        model, stops = self.loaded.model, self.loaded.template.stop
        if column.base:
            if self.separate_base is not None:
                return self.separate_base.generate(prompts, self.sampling, stops)
            with model.disable_adapter():
                return self.loaded.engine.generate(prompts, self.sampling, stops)
        if column.adapter is not None and len(self.loaded.names) > 1:
            model.set_adapter(column.adapter)
        return self.loaded.engine.generate(prompts, self.sampling, stops)


def load_answerer(cfg: InferConfig, adapters: dict[str, str], template_name: str) -> Answerer:
    from instructglm.models.loading import load_model, resolve_model
    from instructglm.runinfo import adapter_info

    loaded = load_engine(cfg.model, adapters, template_name)
    separate_base = None
    if cfg.compare_base and not hasattr(loaded.model, "disable_adapter"):  # freeze/full changed the weights
        base = cfg.model or adapter_info(next(iter(adapters.values()))).base_model
        separate_base = Engine(load_model(resolve_model(base)).eval(), loaded.tokenizer)
    return Answerer(loaded, cfg.sampling(), separate_base)


def prediction_row(index: int, conv: Conversation, prompt: str, answers: dict[str, str]) -> dict:
    row = {"index": index, "prompt": prompt, "reference": conv.reference, **answers}
    for k, v in conv.metadata.items():
        if k != "index":
            row.setdefault(k, v)
    return row


def answer_all(answerer: Answerer, conversations: list[Conversation], prompts: list[list[int]], todo: list[int],
               columns: list[Column], batch_size: int, partial: Path | None, settings: dict,
               done: dict[int, dict]) -> None:
    """Answer the ``todo`` rows batch by batch into ``done``, each batch appended to ``partial``."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(conversations) * len(columns), initial=len(done) * len(columns), desc="generate",
               unit=" answers", disable=None)
    try:
        _answer_batches(answerer, conversations, prompts, todo, columns, batch_size, partial, settings, done, bar)
    except OSError as e:  # a full disk while appending: the rows so far stay in the partial file
        error = write_error(partial, e)
        if error is None:
            raise
        raise error from None
    bar.close()


def _answer_batches(answerer: Answerer, conversations: list[Conversation], prompts: list[list[int]], todo: list[int],
                    columns: list[Column], batch_size: int, partial: Path | None, settings: dict,
                    done: dict[int, dict], bar) -> None:
    decode = answerer.loaded.tokenizer.decode
    fresh = partial is None or not partial.is_file() or partial.stat().st_size == 0
    # appended and synced batch by batch (not an atomic write): the partial file is what survives a crash
    with open(partial, "a", encoding="utf-8") if partial is not None else nullcontext() as part:
        if fresh and part is not None:
            part.write(dumps({"resume": settings}) + "\n")
        for start in range(0, len(todo), batch_size):
            idx = todo[start:start + batch_size]
            answers: dict[int, dict[str, str]] = {i: {} for i in idx}
            for column in columns:
                for i, text in zip(idx, answerer.answer(column, [prompts[i] for i in idx])):
                    answers[i][column.key] = text
                bar.update(len(idx))
            for i in idx:
                prompt = decode(prompts[i], skip_special_tokens=True)
                done[i] = prediction_row(i, conversations[i], prompt, answers[i])
                if part is not None:
                    part.write(dumps(done[i]) + "\n")
            if part is not None:
                part.flush()
                os.fsync(part.fileno())


def print_answers(conversations: list[Conversation], rows: list[dict], columns: list[Column]) -> None:
    """Each record's last user turn and its answers, as ChatGLM-Tuning's infer.py shows them."""
    for i, (conv, row) in enumerate(zip(conversations, rows), start=1):
        print(f"### {i}. Instruction:\n{conv.prompt[-1].content}\n")
        for column in columns:
            name = f" ({column.key})" if len(columns) > 1 else ""
            print(f"### Answer{name}:\n{row[column.key]}\n")


def check_output(cfg: InferConfig, adapters: dict[str, str]) -> tuple[Path, Path | None]:
    """The output path and its partial file, checked before anything is read or written.

    Refused: an output that cannot take a file, or that is the data file (also its partial file).
    A character device or FIFO (``-o /dev/null``) is written through and keeps no partial file.
    """
    output = Path(cfg.output) if cfg.output else Path(next(iter(adapters.values()))) / "predictions.jsonl"
    dest = output_file(output, "--output")
    partial = None if dest.stream else partial_path(dest.path)
    refuse_inputs([("--output", output), *([("partial file", partial)] if partial else [])], [cfg.data])
    return output, partial


def infer(cfg: InferConfig) -> dict:
    """Generate an answer for every record of ``cfg.data``; write ``cfg.output`` (JSONL). Without an
    output the predictions go next to the (first) adapter and every answer is printed."""
    import torch

    adapters, template_name = choose_adapters(cfg.adapter, cfg.template)
    if cfg.compare_base and not adapters:
        raise UserError("--compare-base needs --adapter")
    output, partial = check_output(cfg, adapters)
    conversations = read_conversations(cfg.data, cfg.format, cfg.limit, column_map(cfg.map, cfg.format))
    columns = prediction_columns(adapters, cfg.compare_base)
    settings = run_settings(cfg, adapters, template_name, columns)
    done = read_partial(partial, settings) if partial is not None and partial.is_file() else {}
    done = {i: row for i, row in done.items() if i < len(conversations)}
    if done:
        log.info("resuming from %s: %d of %d rows already done", partial, len(done), len(conversations))

    answerer = load_answerer(cfg, adapters, template_name)
    loaded = answerer.loaded
    torch.manual_seed(cfg.seed)
    prompts = loaded.engine.prompts_ids(loaded.template, [c.prompt for c in conversations])
    todo = sorted((i for i in range(len(conversations)) if i not in done), key=lambda i: len(prompts[i]))
    answer_all(answerer, conversations, prompts, todo, columns, cfg.batch_size, partial, settings, done)
    rows = [done[i] for i in range(len(conversations))]
    n = write_jsonl(output, rows)
    if partial is not None:
        partial.unlink()
    if cfg.output is None:
        print_answers(conversations, rows, columns)
    return {"output": str(output), "records": n, "template": loaded.template.name, "columns": [c.key for c in columns],
            "resumed": len(conversations) - len(todo), "generated": len(todo)}
