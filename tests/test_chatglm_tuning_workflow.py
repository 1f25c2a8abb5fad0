"""The four command lines of the ChatGLM-Tuning README, as written, through the real CLI on a tiny LLaMA.

Only ``--model`` is added (no hub here) and ``--max_steps`` made small; the lines are split with
``shlex`` exactly as a shell would.
"""

import json
import shlex

import datasets
import pytest

from sample_data import ALPACA_ROWS
from instructglm.cli import VERBS, _fix_positionals, build_parser, main
from instructglm.config import flat_values

CONVERT = "instructglm convert --data_path data/alpaca_data_zh.json --save_path data/alpaca_data_zh.jsonl"
TOKENIZE = ("instructglm tokenize --jsonl_path data/alpaca_data_zh.jsonl --save_path data/alpaca_zh "
            "--max_seq_length 200 --skip_overlength true")
TRAIN = ("instructglm train --dataset_path data/alpaca_zh --lora_rank 8 --per_device_train_batch_size 6 "
         "--gradient_accumulation_steps 1 --max_steps 52000 --save_steps 1000 --save_total_limit 2 "
         "--learning_rate 1e-4 --fp16 false --remove_unused_columns false --logging_steps 50 --output_dir output_zh")
INFER = "instructglm infer --data_path data/alpaca_data_zh.json --model_path output_zh"


def _run(line: str, *extra: str) -> int:
    argv = shlex.split(line)
    assert argv[0] == "instructglm"
    return main([*argv[1:], *extra])


def test_the_four_lines_run_as_written(tmp_path, monkeypatch, tiny_models, capsys):
    model = tiny_models("llama")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    rows = ALPACA_ROWS * 3
    (tmp_path / "data" / "alpaca_data_zh.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")

    assert _run(CONVERT) == 0
    recs = [json.loads(line) for line in (tmp_path / "data" / "alpaca_data_zh.jsonl").read_text().splitlines()]
    assert len(recs) == len(rows) and recs[1]["messages"][0]["instruction"] == "把下面的英文转换成大写字母"

    assert _run(TOKENIZE, "--model", model) == 0
    stats = json.loads((tmp_path / "data" / "alpaca_zh" / "stats.json").read_text())
    assert stats["rows_out"] == len(rows) and stats["max_seq_length"] == 200
    assert len(datasets.load_from_disk(str(tmp_path / "data" / "alpaca_zh"))) == len(rows)

    assert _run(TRAIN.replace("--max_steps 52000", "--max_steps 2"), "--model", model) == 0
    err = capsys.readouterr().err
    assert "--remove_unused_columns false: ignored" in err  # accepted with a one-line note
    run = tmp_path / "output_zh"
    info = json.loads((run / "instructglm.json").read_text())
    assert info["base_model"] == model and info["steps"] == 2
    assert "lora_rank: 8" in (run / "train_config.yaml").read_text()

    assert _run(INFER) == 0  # the base model is read from the run
    out = capsys.readouterr().out
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == len(rows) and all(isinstance(p["prediction"], str) for p in predictions)
    for row, pred in zip(rows[:4], predictions):  # each instruction printed with its answer
        assert row["instruction"] in out and pred["prediction"].strip() in out


def _config(argv: list[str]):
    """The config a command line gives, through the CLI's own reading of it (nothing is run)."""
    argv, _ = VERBS[argv[0]].prepare(argv)
    args = build_parser().parse_args(argv)
    _fix_positionals(args)
    verb = VERBS[args.command]
    return flat_values(verb.configure(args, verb.target()[0]))


@pytest.mark.parametrize("value,expected", [("true", True), ("1", True), ("yes", True), ("TRUE", True),
                                            ("false", False), ("0", False), ("no", False), ("off", False)])
def test_boolean_flags_take_values(value, expected):
    assert _config(["tokenize", "in.jsonl", "-o", "out", "--skip_overlength", value])["skip_overlength"] is expected
    assert _config(["tokenize", "in.jsonl", "-o", "out", f"--train-on-prompt={value}"])["train_on_prompt"] is expected
    assert _config(["train", "--dataset", "d", "-o", "o", "--fp16", value])["fp16"] is expected  # an option group's


def test_boolean_flags_bare_and_negated_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert _config(["tokenize", "--force", "in.jsonl", "-o", "out"])["force"] is True  # a file is not a value
    assert _config(["tokenize", "--force", "data", "-o", "out"])["input"] == "data"  # nor an existing path
    assert _config(["tokenize", "in.jsonl", "-o", "out", "--no-force"])["force"] is False
    assert _config(["train", "--dataset", "d", "-o", "o", "--fp16"])["fp16"] is True
    assert _config(["train", "--fp16", "lora_rank=4", "--dataset", "d", "-o", "o"])["lora_rank"] == 4


@pytest.mark.parametrize("flag", [["--fp16", "maybe"], ["--fp16=maybe"], ["--fp16", "2"]])
def test_a_wrong_boolean_value_names_the_flag(flag, capsys):
    assert main(["train", "--dataset", "d", "-o", "o", *flag]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("instructglm train: error: --fp16 ") and "expected true or false" in err
    assert len(err.splitlines()) == 1


def test_trainer_flags_without_meaning_are_dropped_with_a_note():
    argv, notes = VERBS["train"].prepare(["train", "--report_to", "none", "--do_train", "--dataset", "d",
                                          "--remove_unused_columns=false", "-o", "o"])
    assert argv == ["train", "--dataset", "d", "-o", "o"]
    assert [n.split(":")[0] for n in notes] == ["--report_to none", "--do_train", "--remove_unused_columns false"]


def test_convert_takes_inputs_as_positionals_or_data_path(tmp_path):
    cfg = _config(["convert", "a.json", "--data_path", "b.json", "--save_path", "out.jsonl"])
    assert (sorted(cfg["inputs"]), cfg["output"]) == (["a.json", "b.json"], "out.jsonl")
