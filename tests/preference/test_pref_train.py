"""``train --stage dpo|orpo|simpo|kto`` on a tiny model: step 0, learning, resume, refusals."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from pref_data import tokenize_pairs
from instructglm.config import load_config
from instructglm.errors import UserError
from instructglm.train import TrainConfig, train


def _cfg(dataset, out, model, **kw):
    base = dict(dataset=str(dataset), output_dir=str(out), model=model, stage="dpo", lora_rank=4,
                per_device_train_batch_size=4, max_steps=2, logging_steps=1, learning_rate=1e-2, seed=3)
    base.update(kw)
    return load_config(TrainConfig, **base)


@pytest.mark.parametrize("options", [dict(), dict(precompute_ref=True), dict(method="full"),
                                     dict(method="full", precompute_ref=True), dict(method="freeze")])
def test_dpo_step_0_is_ln2_with_zero_rewards(tmp_path, tiny_models, pair_dataset, options):
    result = train(_cfg(pair_dataset("llama"), tmp_path / "out", tiny_models("llama"), max_steps=1,
                        learning_rate=1e-3, **options))
    first = result["logs"][0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["rewards_chosen"] == pytest.approx(0, abs=1e-5)
    assert first["rewards_rejected"] == pytest.approx(0, abs=1e-5)
    assert first["reward_margin"] == pytest.approx(0, abs=1e-5) and first["reward_accuracy"] == 0
    assert first["logps_chosen"] < 0 and first["logps_rejected"] < 0
    logged = json.loads((tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()[0])
    assert set(logged) >= {"loss", "rewards_chosen", "rewards_rejected", "reward_accuracy", "reward_margin",
                           "logps_chosen", "logps_rejected"}
    if options.get("precompute_ref"):
        assert list(pair_dataset("llama").glob("reference-*.safetensors"))


@pytest.mark.slow
def test_reward_accuracy_rises_over_a_few_dozen_steps(tmp_path, tiny_models, pair_dataset):
    result = train(_cfg(pair_dataset("llama"), tmp_path / "out", tiny_models("llama"), max_steps=24,
                        per_device_train_batch_size=8, learning_rate=2e-2, beta=0.5))
    logs = result["logs"]
    early = sum(r["reward_accuracy"] for r in logs[:3]) / 3
    late = sum(r["reward_accuracy"] for r in logs[-5:]) / 5
    assert late >= 0.9 > early
    assert logs[-1]["reward_margin"] > logs[0]["reward_margin"] + 0.1
    assert logs[-1]["loss"] < math.log(2) - 0.1
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_resume_is_exact(tmp_path, tiny_models, pair_dataset):
    model = tiny_models("llama")
    kw = dict(max_steps=4, save_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=2, lora_dropout=0.1)
    full = train(_cfg(pair_dataset("llama"), tmp_path / "full", model, **kw))
    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", part / "checkpoint-2")
    resumed = train(_cfg(pair_dataset("llama"), part, model, resume="latest", **kw))
    assert [r["loss"] for r in resumed["logs"]] == [r["loss"] for r in full["logs"]]
    assert [r["rewards_chosen"] for r in resumed["logs"]] == [r["rewards_chosen"] for r in full["logs"]]


@pytest.mark.parametrize("stage, options", [("orpo", {}), ("simpo", {"gamma": 0.3}), ("kto", {}),
                                            ("dpo", {"dpo_loss": "ipo", "sft_weight": 0.5}),
                                            ("dpo", {"dpo_loss": "hinge", "packing": False})])
def test_each_stage_trains_and_logs(tmp_path, tiny_models, pair_dataset, stage, options):
    result = train(_cfg(pair_dataset("llama"), tmp_path / "out", tiny_models("llama"), stage=stage, **options))
    assert len(result["logs"]) == 2 and all(math.isfinite(r["loss"]) for r in result["logs"])
    assert "rewards_chosen" in result["logs"][0] and "logps_rejected" in result["logs"][0]


def test_kto_on_labelled_completions(tmp_path, tiny_models):
    from pref_data import DATA

    from instructglm.convert import ConvertConfig
    from instructglm.convert.pref_files import convert_preference_files

    canonical = tmp_path / "k.jsonl"
    convert_preference_files(ConvertConfig(inputs=[], output=str(canonical)), [DATA / "kto.jsonl"])
    tok = tokenize_pairs(tmp_path, tiny_models("llama"), canonical)
    result = train(_cfg(tok, tmp_path / "out", tiny_models("llama"), stage="kto", max_steps=1))
    assert result["logs"][0]["loss"] == pytest.approx(0.5, abs=1e-5)  # policy = reference: 1 - sigmoid(0)
    with pytest.raises(UserError, match="holds KTO completions"):
        train(_cfg(tok, tmp_path / "dpo", tiny_models("llama"), stage="dpo"))


def test_wrong_rows_are_refused(tmp_path, tiny_models, tokenized, pair_dataset):
    with pytest.raises(UserError, match="SFT rows; --stage dpo trains on preference data"):
        train(_cfg(tokenized("llama"), tmp_path / "a", tiny_models("llama")))
    with pytest.raises(UserError, match="preference pairs"):
        train(_cfg(pair_dataset("llama"), tmp_path / "b", tiny_models("llama"), stage="sft"))
