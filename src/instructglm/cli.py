"""The ``instructglm`` command: a thin map from each subcommand to one plain function.

Every subcommand's options come from its config dataclass (``--kebab-case`` flags; the
``--snake_case`` names of ChatGLM-Tuning and Alpaca-LoRA, such as ``--lora_rank``, as aliases; a
boolean flag also takes a value, ``--fp16 false``, as transformers' ``TrainingArguments`` do, and
``train`` accepts with a note the ``TrainingArguments`` flags those scripts pass that mean nothing here).
``train`` also takes a YAML file and ``key=value`` overrides, before or after the flags. Every value is
checked by the config layer (:mod:`instructglm.config`: types, finite numbers, declared ranges) before
anything is loaded. User mistakes (``UserError``) print one line and exit with status 2, without a traceback.

:data:`VERBS` lists the subcommands: where the config class and the function live, and the line
printed when a batch verb is done (the interactive ``chat``, ``serve`` and ``demo`` talk to the
user themselves). What else reaches the terminal is decided in :mod:`instructglm.console`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Callable

from instructglm import __version__, console
from instructglm.config import add_arguments, boolean_flags, is_value_word, load_config, spell_booleans
from instructglm.errors import UserError


# ------------------------------------------------------------------------------------------ results


def summary_convert(cfg, result: dict) -> str:
    rejects = f"; rejects in {result['rejects']}" if result.get("rejects") else ""
    return (f"wrote {result['records']} records to {result['output']} ({result['converted']} converted, "
            f"{result['rejected']} rejected, {result['duplicates']} duplicates removed{rejects})")


def summary_tokenize(cfg, stats: dict) -> str:
    examples = "".join(example + "\n\n" for example in stats.get("examples", []))
    if stats.get("up_to_date"):
        return (f"{examples}{cfg.output}: up to date ({stats['rows_out']} rows; same input, tokenizer, template "
                f"and options); --force to redo")
    if stats.get("stage") == "pt":  # no template, nothing truncated: long documents are split into rows
        return f"{examples}{stats['rows_out']} rows written to {cfg.output}; {stats['note']}"
    return (f"{examples}{stats['rows_out']} rows written to {cfg.output} in {stats.get('seconds', 0):.1f} s "
            f"({stats['rows_skipped']} skipped, {stats['rows_truncated']} truncated: "
            f"{stats.get('rows_truncated_prompt', 0)} in the prompt, {stats.get('rows_truncated_response', 0)} "
            f"in the response; {stats.get('num_proc', 1)} process(es))\n"
            f"lengths before {stats['length_before']}\nlengths after  {stats['length_after']}")


def summary_train(cfg, result: dict | None) -> str | None:
    # Launched processes, other ranks and interrupted runs (train() said how to resume) print nothing here.
    if result is None or os.environ.get("RANK", "0") != "0" or result.get("interrupted"):
        return None
    last = result["logs"][-1]["loss"] if result["logs"] else float("nan")
    return f"trained {result['steps']} steps, final loss {last:.4f}; adapter in {result['output_dir']}"


def summary_infer(cfg, result: dict) -> str:
    resumed = f"; {result['resumed']} rows resumed from {result['output']}.partial" if result.get("resumed") else ""
    return (f"wrote {result['records']} predictions to {result['output']} (template {result['template']}, "
            f"columns {', '.join(result['columns'])}{resumed})")


def summary_merge(cfg, result: dict) -> str:
    steps = [f"  {s['adapter']} ({s['method']}): max |logit diff| merged vs unmerged {s['max_abs_logit_diff']:.2e}, "
             f"adapter effect {s['adapter_effect']:.2e}" for s in result["steps"]]
    cast = (f"; saved as {result['dtype']}, cast changes logits by {result['cast_logit_diff']:.2e}"
            if result["dtype"] != "float32" else "")
    done = (f"merged model written to {result['output']} (max |logit diff| vs base+adapter: "
            f"{result['max_abs_logit_diff']:.2e}, tolerance {result['tolerance']:.0e}, checked in fp32{cast}; "
            f"read back within {result['readback_diff']:.2e})")
    return "\n".join([*steps, done])


def summary_export(cfg, result: dict) -> str:
    return (f"wrote {result['output']} ({result['arch']}, {result['quant']}, {result['tensors']} tensors, "
            f"{result['size_mb']:.1f} MB) and {result['modelfile']}")


def summary_eval(cfg, result: dict) -> str:
    from instructglm.eval import format_table

    return format_table(result) + (f"\n\nmetrics written to {cfg.output}" if cfg.output else "")


def summary_report(cfg, path) -> str:
    return f"report written to {path}"


# ------------------------------------------------------------------------------------------ verbs


def _config_from_flags(args: argparse.Namespace, cls):
    return load_config(cls, flags=_flags(args, cls))


def _train_config(args: argparse.Namespace, cls):
    return load_config(cls, args.config, args.overrides, _flags(args, cls))


def _call(function: Callable, cfg, args: argparse.Namespace):
    return function(cfg)


def _tokenize_in_color(function: Callable, cfg, args: argparse.Namespace):
    return function(cfg, color=sys.stdout.isatty() and not os.environ.get("NO_COLOR"))


def _train_or_launch(function: Callable, cfg, args: argparse.Namespace):
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _launch(args.nproc, args.argv)  # (the config was checked first)
    return function(cfg)


# TrainingArguments flags that the ChatGLM-Tuning and Chinese-LLaMA-Alpaca scripts pass and that mean
# nothing here: accepted with a note, so that their command lines run as written.
TRAINER_FLAGS_WITHOUT_MEANING = {
    "--remove_unused_columns": "a tokenized dataset holds only the columns training reads",
    "--report_to": "the training log is OUTPUT_DIR/trainer_log.jsonl",
    "--overwrite_output_dir": "a new run refuses a directory holding another run's checkpoints or result; give "
                              "another --output_dir, or --resume latest",
    "--do_train": "train always trains",
}


def drop_flags_without_meaning(argv: list[str], flags: dict[str, str]) -> tuple[list[str], list[str]]:
    """``argv`` without the ``flags`` (each with its value, if one follows), and a note for each."""
    kept: list[str] = []
    notes: list[str] = []
    i = 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if name not in flags:
            kept.append(argv[i])
        else:
            if not eq and i + 1 < len(argv) and is_value_word(argv[i + 1]):
                value = argv[i + 1]
                i += 1
            notes.append(f"{name}{' ' + value if value else ''}: ignored ({flags[name]})")
        i += 1
    return kept, notes


@dataclass(frozen=True)
class Verb:
    """One subcommand: ``instructglm.<package>`` re-exports its config class and its function."""

    package: str
    config: str
    function: str
    help: str
    summary: Callable[[Any, Any], str | None] | None = None  # (config, result) -> the line printed at the end
    configure: Callable[[argparse.Namespace, type], Any] = _config_from_flags
    call: Callable[[Callable, Any, argparse.Namespace], Any] = _call
    without_meaning: dict[str, str] = dataclasses.field(default_factory=dict)  # flag -> why it is ignored

    def target(self) -> tuple[type, Callable]:
        module = import_module(f"instructglm.{self.package}")
        return getattr(module, self.config), getattr(module, self.function)

    def prepare(self, argv: list[str]) -> tuple[list[str], list[str]]:
        """``argv`` as argparse can read it (boolean values spelled as flags, flags without meaning
        dropped) and the notes to show about what was dropped."""
        argv, notes = drop_flags_without_meaning(argv, self.without_meaning)
        return spell_booleans(argv, boolean_flags(self.target()[0])), notes

    def run(self, args: argparse.Namespace) -> Any:
        cls, function = self.target()
        cfg = self.configure(args, cls)
        result = self.call(function, cfg, args)
        line = self.summary(cfg, result) if self.summary else None
        if line is not None:
            print(line)
        return result


VERBS: dict[str, Verb] = {
    "convert": Verb("convert", "ConvertConfig", "convert_files", "convert dataset files to canonical JSONL",
                    summary_convert),
    "tokenize": Verb("tokenize", "TokenizeConfig", "tokenize_file", "tokenize canonical JSONL into a training dataset",
                     summary_tokenize, call=_tokenize_in_color),
    "train": Verb("train", "TrainConfig", "train", "fine-tune a model (LoRA, P-Tuning v2, Freeze, full)",
                  summary_train, configure=_train_config, call=_train_or_launch,
                  without_meaning=TRAINER_FLAGS_WITHOUT_MEANING),
    "infer": Verb("infer", "InferConfig", "infer", "generate answers for a data file", summary_infer),
    "chat": Verb("chat", "ChatConfig", "chat",
                 "talk to a model in the terminal, streaming (/reset, /adapter NAME, /exit)"),
    "merge": Verb("merge", "MergeConfig", "merge",
                  "fold LoRA adapters (in order), Freeze or full results into the base model", summary_merge),
    "export": Verb("export", "ExportConfig", "export", "write a GGUF file (llama.cpp) and an Ollama Modelfile",
                   summary_export),
    "demo": Verb("demo", "DemoConfig", "run_demo",
                 "tune the embedded model on the embedded data and show before/after"),
    "eval": Verb("eval", "EvalConfig", "evaluate",
                 "score predictions: EM, BLEU-4, ROUGE, per category, base vs tuned", summary_eval),
    "serve": Verb("serve", "ServeConfig", "serve",
                  "OpenAI-compatible HTTP API and chat page for a model and its adapters"),
    "report": Verb("report", "ReportConfig", "write_report", "write a self-contained HTML report of a run",
                   summary_report),
    "board": Verb("board", "BoardConfig", "board",
                  "local web UI (English/中文): data, training, runs, chat, evaluation, export"),
}


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
    parser = argparse.ArgumentParser(prog="instructglm", description="Instruction-tune causal language models, "
                                     "offline: convert -> tokenize -> train -> infer -> merge.")
    parser.add_argument("--version", action="version", version=f"instructglm {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also the libraries' log lines, warnings and progress bars (transformers, datasets, ...)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    commands = {}
    for name, verb in VERBS.items():
        p = commands[name] = sub.add_parser(name, help=verb.help, description=verb.help)
        add_arguments(p, verb.target()[0])
        p.set_defaults(func=verb.run)
    commands["convert"].add_argument("inputs_pos", nargs="*", metavar="IN", help="input files or glob patterns")
    commands["tokenize"].add_argument("input_pos", nargs="?", metavar="IN.jsonl", help="canonical JSONL file")
    commands["train"].add_argument("config", nargs="?", default=None, help="YAML config file (optional)")
    commands["train"].add_argument("overrides", nargs="*", default=[], metavar="key=value", help="config overrides")
    commands["train"].add_argument("--nproc", type=int, default=1,
                                   help="launch N training processes on this machine (torchrun); for several "
                                        "machines use torchrun or accelerate launch directly")
    commands["eval"].add_argument("predictions_pos", nargs="?", metavar="PRED.jsonl",
                                  help="predictions JSONL from 'infer'")
    commands["report"].add_argument("run_dir_pos", nargs="?", metavar="RUN_DIR",
                                    help="demo work dir or train output dir")
    return parser


def _fix_positionals(args: argparse.Namespace) -> None:
    if getattr(args, "inputs_pos", None):
        args.inputs = [*(args.inputs or []), *args.inputs_pos]
    if getattr(args, "input_pos", None):
        if getattr(args, "input", None):
            raise UserError("give the input file once (positional or --input)")
        args.input = args.input_pos
    for pos, name in (("predictions_pos", "predictions"), ("run_dir_pos", "run_dir")):
        if getattr(args, pos, None):
            if getattr(args, name, None):
                raise UserError(f"give --{name.replace('_', '-')} once (positional or flag)")
            setattr(args, name, getattr(args, pos))
    if args.command == "train":  # the YAML file and key=value overrides, in any order, before or after flags
        words = [w for w in [args.config, *args.overrides, *getattr(args, "extra", [])] if w is not None]
        files = [w for w in words if "=" not in w]
        if len(files) > 1:
            raise UserError(f"train takes one YAML config file, got {', '.join(files)} (overrides are key=value)")
        args.config, args.overrides = (files or [None])[0], [w for w in words if "=" in w]


def parse_command_line(argv: list[str], parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """``argv`` (as :meth:`Verb.prepare` leaves it) read by ``parser`` (default :func:`build_parser`):
    ``train``'s ``key=value`` overrides may also come after flags. Anything else unknown exits as
    argparse does (status 2, with the usage)."""
    parser = parser or build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse reads the positionals of train (YAML file, overrides) in one run: those after a flag come back here
    args.extra = [w for w in extra if args.command == "train" and "=" in w and not w.startswith("-")]
    if len(args.extra) < len(extra):
        parser.error(f"unrecognized arguments: {' '.join(w for w in extra if w not in args.extra)}")
    args.argv = argv
    return args


def run() -> None:
    """The ``instructglm`` command: :func:`main`, then :func:`exit_now`."""
    exit_now(main())


def exit_now(code: int) -> None:
    """End the process as a normal exit would (other threads joined, ``atexit`` handlers run: logging's
    flush, temporary directories; the standard streams flushed), minus the interpreter's teardown:
    unloading torch and transformers and freeing a model's memory object by object, after a finished
    ``train``, is work nobody waits for."""
    import atexit
    import threading

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # what the interpreter runs at exit, before the teardown skipped here
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a broken pipe: as Python's own exit, nothing more to say
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    try:
        argv, notes = VERBS[command].prepare(argv) if command in VERBS else (argv, [])
    except UserError as e:
        print(f"instructglm {command}: error: {e}", file=sys.stderr)
        return 2
    args = parse_command_line(argv)
    console.setup(quiet=args.quiet, verbose=args.verbose)
    for note in notes if not args.quiet else []:
        print(f"instructglm {args.command}: note: {note}", file=sys.stderr)
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
