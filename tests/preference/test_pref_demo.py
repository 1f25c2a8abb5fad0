"""``demo --stage dpo`` end to end on a tiny model with a few steps: its files and printed table, not its quality;
and the behaviour measure it reports on generated answers."""

from __future__ import annotations

import json

import pytest

from instructglm.cli import main
from instructglm.demo.preference import DEFAULTS, PREF_EVAL, behaviour, one_short_answer


def test_dpo_demo_writes_its_files_and_prints_before_after(tmp_path, tiny_models, capsys):
    work = tmp_path / "demo"
    code = main(["demo", "--stage", "dpo", "--model", tiny_models("llama"), "--work-dir", str(work),
                 "--max-steps", "2", "--batch-size", "4", "--lora-rank", "4", "--max-new-tokens", "4",
                 "--test-limit", "6", "--show", "2"])
    out = capsys.readouterr().out
    assert code == 0
    for name in ("pairs_train.jsonl", "pairs_test.jsonl", "prompts_test.jsonl", "predictions.jsonl",
                 "summary.json", PREF_EVAL, "report.html", "adapter/adapter_model.safetensors"):
        assert (work / name).is_file(), name
    summary = json.loads((work / "summary.json").read_text())
    assert summary["stage"] == "dpo" and summary["steps"] == 2 and summary["sft_weight"] == DEFAULTS["sft_weight"]
    assert "sft_weight: 1.0" in (work / "adapter" / "train_config.yaml").read_text()  # the demo's default reached train
    assert set(summary["preference"]) == {"base", "tuned"} and summary["preference"]["tuned"]["n"] == 6
    assert set(summary["behaviour"]["base"]) == {"n", "one_short_answer", "correct"}
    log = [json.loads(x) for x in (work / "adapter" / "trainer_log.jsonl").read_text().splitlines()]
    assert "reward_accuracy" in log[-1]  # a DPO run, not SFT
    pairs = [json.loads(x) for x in (work / "pairs_test.jsonl").read_text().splitlines()]
    assert {p["category"] for p in pairs} > {"capital"} and all(p["rejected"]["content"] for p in pairs)
    rows = [json.loads(x) for x in (work / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"base_prediction", "prediction", "question", "reference"} <= set(rows[0])
    for line in ("preference accuracy %", "mean margin", "one short answer %", "correct (normalised EM) %"):
        assert line in out
    assert "[6/6]" in out and "wall time" in out
    html = (work / "report.html").read_text()
    assert "Preference accuracy" in html and "Answers side by side" in html


def test_sft_demo_keeps_its_defaults():
    from instructglm.demo.demo import SFT_DEFAULTS, DemoConfig

    cfg = DemoConfig()
    assert cfg.stage == "sft" and SFT_DEFAULTS == {"max_steps": 90, "learning_rate": 1e-3}
    assert DEFAULTS["max_steps"] < SFT_DEFAULTS["max_steps"]


@pytest.mark.parametrize("answer, expected", [
    ("北京", True),
    ("Paris", True),
    ("Paris\n\n### Answer:\nParis", False),  # invents a section
    ("中国的首都是哪里？", False),  # echoes the question
    ("The capital of France is Paris, a city on the Seine with many museums and cafes.", False),  # too long
    ("", False),
])
def test_one_short_answer(answer, expected):
    question = "中国的首都是哪里？" if "中国" in answer or answer == "北京" else "What is the capital of France?"
    assert one_short_answer(answer, question, "Paris" if question.startswith("What") else "北京") is expected


def test_behaviour_shares():
    rows = [{"question": "Q?", "reference": "A", "prediction": "A", "base_prediction": "Q?"},
            {"question": "Q2?", "reference": "B", "prediction": "C", "base_prediction": "B\n\n### Answer:\nB"}]
    assert behaviour(rows, "prediction") == {"n": 2, "one_short_answer": 100.0, "correct": 50.0}
    assert behaviour(rows, "base_prediction") == {"n": 2, "one_short_answer": 0.0, "correct": 0.0}


def test_each_demo_stage_has_its_own_directory():
    from instructglm.demo.demo import DemoConfig, default_work_dir

    assert default_work_dir(DemoConfig()) == "runs/demo"  # what the README and `make demo` point at
    assert default_work_dir(DemoConfig(stage="dpo")) == "runs/demo-dpo"
    assert default_work_dir(DemoConfig(stage="dpo", work_dir="mine")) == "mine"
