import json
import shutil

import pytest

from instructglm.config import load_config
from instructglm.errors import UserError
from instructglm.train import TrainConfig, train
from instructglm.train.checkpoint import complete_checkpoints

# Losses of the uninterrupted run below (CPU, fp32), recorded before the recipe was split into steps.
RECORDED = [7.3134752161362595, 6.276533086249169, 5.613472794041489, 4.556263051134475, 4.306553896735696,
            3.955109798546993]


@pytest.fixture()
def dataset(tokenized):
    return tokenized("llama")


def _cfg(dataset, out, model, **kw):
    base = dict(dataset=str(dataset), output_dir=str(out), model=model, lora_rank=4, lora_dropout=0.1,
                per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=6, logging_steps=1,
                learning_rate=1e-2, save_steps=3, seed=3)
    base.update(kw)
    return load_config(TrainConfig, **base)


def test_resume_reproduces_the_uninterrupted_losses_exactly(tmp_path, dataset, tiny_models):
    model = tiny_models("llama")
    full = train(_cfg(dataset, tmp_path / "full", model))
    assert [r["step"] for r in full["logs"]] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in full["logs"]] == pytest.approx(RECORDED, rel=1e-6)
    # An interrupted run: only the step-3 checkpoint survives, then training resumes to step 6.
    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-3", part / "checkpoint-3")
    resumed = train(_cfg(dataset, part, model, resume="latest"))
    assert [r["loss"] for r in resumed["logs"]] == [r["loss"] for r in full["logs"]]  # bit-exact on CPU
    lines = (part / "trainer_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4, 5, 6]


def test_incomplete_checkpoint_is_never_resumed(tmp_path, dataset, tiny_models):
    out = tmp_path / "run"
    train(_cfg(dataset, out, tiny_models("llama"), max_steps=3, save_steps=1, save_total_limit=5))
    (out / "checkpoint-2" / ".complete").unlink()  # as if the process died while writing it
    with pytest.raises(UserError, match="not a complete checkpoint"):
        train(_cfg(dataset, out, tiny_models("llama"), max_steps=3, resume=str(out / "checkpoint-2")))
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-1"]


def test_dataset_from_another_tokenizer_is_refused(tmp_path, dataset, tiny_models):
    with pytest.raises(UserError, match="different tokenizer"):
        import os
        other = tmp_path / "other"
        shutil.copytree(tiny_models("llama"), other)
        tok = json.loads((other / "tokenizer.json").read_text())
        tok["model"]["vocab"]["zzzz"] = len(tok["model"]["vocab"])
        (other / "tokenizer.json").write_text(json.dumps(tok))
        assert os.path.exists(other / "config.json")
        train(_cfg(dataset, tmp_path / "x", str(other)))


def test_config_yaml_overrides_and_errors(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("dataset: d\noutput_dir: o\nlora_rank: 16\nlearning_rate: 3e-4\n")
    cfg = load_config(TrainConfig, y, ["lora_rank=32", "max_steps=5"], {"seed": 9})
    assert (cfg.lora.rank, cfg.optimizer.learning_rate, cfg.schedule.max_steps, cfg.seed) == (32, 3e-4, 5, 9)
    y.write_text("dataset: d\noutput_dir: o\nlora_rnak: 16\n")
    with pytest.raises(UserError, match=f"{y}: unknown config key 'lora_rnak'"):
        load_config(TrainConfig, y)
    with pytest.raises(UserError, match="'learning_rate': expected float"):
        load_config(TrainConfig, None, ["dataset=d", "output_dir=o", "learning_rate=fast"])
    with pytest.raises(UserError, match="lr_scheduler"):
        load_config(TrainConfig, None, ["dataset=d", "output_dir=o", "lr_scheduler=wild"])
    with pytest.raises(UserError, match="missing required option"):
        load_config(TrainConfig, None, ["dataset=d"])


def test_several_tokenized_parts_train_as_one(tmp_path, dataset, tiny_models):
    """Shards tokenized separately (e.g. on different machines) give the same run as one dataset."""
    import datasets

    whole = datasets.load_from_disk(str(dataset))
    manifest = (dataset / "manifest.json").read_text()
    for i, rows in enumerate([range(0, 5), range(5, len(whole))]):
        part = tmp_path / f"part{i}"
        whole.select(rows).save_to_disk(str(part))
        (part / "manifest.json").write_text(manifest)
    model = tiny_models("llama")
    one = train(_cfg(dataset, tmp_path / "one", model, save_steps=0))
    two = train(_cfg(f"{tmp_path / 'part0'},{tmp_path / 'part1'}", tmp_path / "two", model, save_steps=0))
    assert [r["loss"] for r in two["logs"]] == [r["loss"] for r in one["logs"]]
