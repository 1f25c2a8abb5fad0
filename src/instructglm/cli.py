"""The ``instructglm`` command: a thin layer that maps each subcommand to one plain function.

Every subcommand's options come from its config dataclass (``--kebab-case`` flags, the seeds'
``--snake_case`` names as aliases). ``train`` also takes a YAML file and ``key=value`` overrides.
User mistakes (``UserError``) print one line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Any, Callable

from instructglm import __version__
from instructglm.config import add_arguments, load_config
from instructglm.errors import UserError


def _convert(args) -> Any:
    from instructglm.convert.convert import ConvertConfig, convert_files

    cfg = load_config(ConvertConfig, flags=_flags(args, ConvertConfig))
    result = convert_files(cfg)
    rejects = f"; rejects in {result['rejects']}" if result.get("rejects") else ""
    print(f"wrote {result['records']} records to {result['output']} ({result['converted']} converted, "
          f"{result['rejected']} rejected, {result['duplicates']} duplicates removed{rejects})")
    return result


def _tokenize(args) -> Any:
    from instructglm.tokenize.tokenize import TokenizeConfig, tokenize_file

    cfg = load_config(TokenizeConfig, flags=_flags(args, TokenizeConfig))
    stats = tokenize_file(cfg, color=sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    for example in stats.get("examples", []):
        print(example + "\n")
    if stats.get("up_to_date"):
        print(f"{cfg.output}: up to date ({stats['rows_out']} rows; same input, tokenizer, template and "
              f"options); --force to redo")
        return stats
    print(f"{stats['rows_out']} rows written to {cfg.output} in {stats.get('seconds', 0):.1f} s "
          f"({stats['rows_skipped']} skipped, {stats['rows_truncated']} truncated: "
          f"{stats.get('rows_truncated_prompt', 0)} in the prompt, {stats.get('rows_truncated_response', 0)} "
          f"in the response; {stats.get('num_proc', 1)} process(es))")
    print(f"lengths before {stats['length_before']}\nlengths after  {stats['length_after']}")
    return stats


def _train(args) -> Any:
    from instructglm.train.recipe import TrainConfig, train

    cfg = load_config(TrainConfig, args.config, args.overrides, _flags(args, TrainConfig))
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _launch(args.nproc, args.argv)
    result = train(cfg)
    if os.environ.get("RANK", "0") != "0" or result.get("interrupted"):  # interrupted: train() said how to resume
        return result
    last = result["logs"][-1]["loss"] if result["logs"] else float("nan")
    print(f"trained {result['steps']} steps, final loss {last:.4f}; adapter in {result['output_dir']}")
    return result


def _infer(args) -> Any:
    from instructglm.infer.infer import InferConfig, infer

    cfg = load_config(InferConfig, flags=_flags(args, InferConfig))
    result = infer(cfg)
    resumed = f"; {result['resumed']} rows resumed from {result['output']}.partial" if result.get("resumed") else ""
    print(f"wrote {result['records']} predictions to {result['output']} (template {result['template']}, "
          f"columns {', '.join(result['columns'])}{resumed})")
    return result


def _chat(args) -> Any:
    from instructglm.chat.chat import ChatConfig, chat

    return chat(load_config(ChatConfig, flags=_flags(args, ChatConfig)))


def _merge(args) -> Any:
    from instructglm.merge.merge import MergeConfig, merge

    cfg = load_config(MergeConfig, flags=_flags(args, MergeConfig))
    result = merge(cfg)
    for s in result["steps"]:
        print(f"  {s['adapter']} ({s['method']}): max |logit diff| merged vs unmerged {s['max_abs_logit_diff']:.2e}, "
              f"adapter effect {s['adapter_effect']:.2e}")
    cast = (f"; saved as {result['dtype']}, cast changes logits by {result['cast_logit_diff']:.2e}"
            if result["dtype"] != "float32" else "")
    print(f"merged model written to {result['output']} (max |logit diff| vs base+adapter: "
          f"{result['max_abs_logit_diff']:.2e}, tolerance {result['tolerance']:.0e}, checked in fp32{cast}; "
          f"read back within {result['readback_diff']:.2e})")
    return result


def _export(args) -> Any:
    from instructglm.export.gguf import ExportConfig, export

    cfg = load_config(ExportConfig, flags=_flags(args, ExportConfig))
    result = export(cfg)
    print(f"wrote {result['output']} ({result['arch']}, {result['quant']}, {result['tensors']} tensors, "
          f"{result['size_mb']:.1f} MB) and {result['modelfile']}")
    return result


def _demo(args) -> Any:
    from instructglm.demo.demo import DemoConfig, run_demo

    cfg = load_config(DemoConfig, flags=_flags(args, DemoConfig))
    return run_demo(cfg)


def _eval(args) -> Any:
    from instructglm.eval.evaluate import EvalConfig, evaluate, format_table

    cfg = load_config(EvalConfig, flags=_flags(args, EvalConfig))
    result = evaluate(cfg)
    print(format_table(result))
    if cfg.output:
        print(f"\nmetrics written to {cfg.output}")
    return result


def _report(args) -> Any:
    from instructglm.report.report import ReportConfig, write_report

    cfg = load_config(ReportConfig, flags=_flags(args, ReportConfig))
    path = write_report(cfg)
    print(f"report written to {path}")
    return path


def _serve(args) -> Any:
    from instructglm.serve.app import ServeConfig, serve

    return serve(load_config(ServeConfig, flags=_flags(args, ServeConfig)))


def _launch(nproc: int, argv: list[str]) -> None:
    """Re-run this command under torchrun with ``nproc`` processes (the config was checked first)."""
    import subprocess

    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "instructglm", *rest]
    print("launching: " + " ".join(cmd), file=sys.stderr, flush=True)
    code = subprocess.run(cmd).returncode
    if code:
        raise UserError(f"--nproc {nproc}: the training processes failed (exit code {code}); see the log above")


def _flags(args: argparse.Namespace, cls) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def build_parser() -> argparse.ArgumentParser:
    from instructglm.convert.convert import ConvertConfig
    from instructglm.tokenize.tokenize import TokenizeConfig
    from instructglm.demo.demo import DemoConfig
    from instructglm.eval.evaluate import EvalConfig
    from instructglm.report.report import ReportConfig
    from instructglm.chat.chat import ChatConfig
    from instructglm.infer.infer import InferConfig
    from instructglm.export.gguf import ExportConfig
    from instructglm.merge.merge import MergeConfig
    from instructglm.serve.app import ServeConfig
    from instructglm.train.recipe import TrainConfig

    parser = argparse.ArgumentParser(prog="instructglm", description="Instruction-tune causal language models, "
                                     "offline: convert -> tokenize -> train -> infer -> merge.")
    parser.add_argument("--version", action="version", version=f"instructglm {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name: str, func: Callable, cls, help_text: str, positional: tuple[str, ...] = ()):
        p = sub.add_parser(name, help=help_text, description=help_text)
        for pos in positional:
            if pos == "inputs":
                p.add_argument("inputs", nargs="+", metavar="IN", help="input files or glob patterns")
            else:
                p.add_argument(pos, nargs="?", default=None, help=f"{pos} (or --{pos})")
        add_arguments(p, cls, skip=positional)
        p.set_defaults(func=func)
        return p

    command("convert", _convert, ConvertConfig, "convert dataset files to canonical JSONL", ("inputs",))
    tok = command("tokenize", _tokenize, TokenizeConfig, "tokenize canonical JSONL into a training dataset")
    tok.add_argument("input_pos", nargs="?", metavar="IN.jsonl", help="canonical JSONL file")
    train = command("train", _train, TrainConfig, "fine-tune a model (LoRA, P-Tuning v2, Freeze, full)")
    train.add_argument("config", nargs="?", default=None, help="YAML config file (optional)")
    train.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="config overrides")
    train.add_argument("--nproc", type=int, default=1, help="launch N training processes on this machine "
                       "(torchrun); for several machines use torchrun or accelerate launch directly")
    command("infer", _infer, InferConfig, "generate answers for a data file")
    command("chat", _chat, ChatConfig, "talk to a model in the terminal, streaming (/reset, /adapter NAME, /exit)")
    command("merge", _merge, MergeConfig, "fold LoRA adapters (in order), Freeze or full results into the base model")
    command("export", _export, ExportConfig, "write a GGUF file (llama.cpp) and an Ollama Modelfile")
    command("demo", _demo, DemoConfig, "tune the embedded model on the embedded data and show before/after")
    ev = command("eval", _eval, EvalConfig, "score predictions: EM, BLEU-4, ROUGE, per category, base vs tuned")
    ev.add_argument("predictions_pos", nargs="?", metavar="PRED.jsonl", help="predictions JSONL from 'infer'")
    command("serve", _serve, ServeConfig, "OpenAI-compatible HTTP API and chat page for a model and its adapters")
    rep = command("report", _report, ReportConfig, "write a self-contained HTML report of a run")
    rep.add_argument("run_dir_pos", nargs="?", metavar="RUN_DIR", help="demo work dir or train output dir")
    return parser


def _fix_positionals(args: argparse.Namespace) -> None:
    if getattr(args, "input_pos", None):
        if getattr(args, "input", None):
            raise UserError("give the input file once (positional or --input)")
        args.input = args.input_pos
    for pos, name in (("predictions_pos", "predictions"), ("run_dir_pos", "run_dir")):
        if getattr(args, pos, None):
            if getattr(args, name, None):
                raise UserError(f"give --{name.replace('_', '-')} once (positional or flag)")
            setattr(args, name, getattr(args, pos))
    if args.command == "train" and args.config and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    try:
        _fix_positionals(args)
        args.func(args)
    except UserError as e:
        print(f"instructglm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"instructglm {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
