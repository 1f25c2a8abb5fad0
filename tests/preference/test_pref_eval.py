"""``eval`` on preference data (accuracy and mean margin, base vs tuned) and the CLI of the alignment stage."""

from __future__ import annotations

import json

import pytest

from pref_data import TRAIN_PAIRS, write_pairs
from instructglm.cli import main
from instructglm.eval import EvalConfig, evaluate, format_table


@pytest.mark.slow
def test_dpo_from_the_cli_then_eval_base_vs_tuned(tmp_path, tiny_models, pair_dataset, capsys):
    model, out = tiny_models("llama"), tmp_path / "dpo"
    code = main(["train", "--dataset", str(pair_dataset("llama")), "--model", model, "--output-dir", str(out),
                 "--stage", "dpo", "--beta", "0.5", "--label-smoothing", "0.05", "--lora-rank", "4",
                 "--max-steps", "12", "--batch-size", "8", "--learning-rate", "2e-2", "--logging-steps", "4"])
    assert code == 0
    logged = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert logged[-1]["reward_accuracy"] >= 0.9 and logged[-1]["loss"] < 0.6
    assert list((out / "runs").iterdir())  # TensorBoard events

    pairs = write_pairs(tmp_path / "pairs.jsonl", TRAIN_PAIRS)
    result = evaluate(EvalConfig(predictions=str(pairs), adapter=[str(out)], output=str(tmp_path / "m.json")))
    base, tuned = result["systems"]["base"], result["systems"]["tuned"]
    assert result["n"] == len(TRAIN_PAIRS) and tuned["accuracy"] > base["accuracy"]
    assert tuned["mean_margin"] > base["mean_margin"]
    assert result["delta"]["tuned"]["accuracy"] == pytest.approx(tuned["accuracy"] - base["accuracy"])
    table = format_table(result)
    assert "tuned" in table and "mean margin" in table
    assert json.loads((tmp_path / "m.json").read_text())["kind"] == "preference"


def test_bad_stage_option_is_one_line(tmp_path, tiny_models, pair_dataset, capsys):
    code = main(["train", "--dataset", str(pair_dataset("llama")), "--model", tiny_models("llama"),
                 "--output-dir", str(tmp_path / "o"), "--stage", "dpo", "--label-smoothing", "0.7"])
    err = capsys.readouterr().err
    assert code == 2 and "label_smoothing" in err and "Traceback" not in err
