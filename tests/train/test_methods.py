"""torchtune-style checks of every tuning method through the real ``instructglm train`` command:
recorded first losses (a changed number means changed training maths), only the method's
parameters change, and the saved result loads again for inference and merging."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tiny import ARCHS
from instructglm.cli import main

# Losses of steps 1-3 for the fixed seed/config below, recorded from a run of this code (CPU, fp32).
# Step 1 is before any update, so it is the same for all methods with an identity-initialised
# adapter; P-Tuning adds a random prefix, so its first loss differs.
RECORDED = {
    "lora": [6.979087, 7.578086, 5.909901],
    "ptuning": [6.937053, 7.581424, 6.685331],
    "freeze": [6.979087, 7.583820, 4.668303],
    "full": [6.979087, 7.473367, 4.109631],
}

METHOD_ARGS = {
    "lora": ["--lora-rank", "4", "--lora-alpha", "8"],
    "ptuning": ["--pre-seq-len", "4", "--prefix-projection"],
    "freeze": ["--freeze-trainable-layers", "1", "--freeze-modules", "mlp"],
    "full": [],
}


@pytest.fixture(scope="module")
def dataset(tokenized):
    return tokenized


def run_train(dataset_dir, model, out, method, *extra):
    code = main(["-q", "train", "--dataset", str(dataset_dir), "--model", model, "-o", str(out), "--method", method,
                 "--max-steps", "3", "--logging-steps", "1", "--batch-size", "2", "--learning-rate", "1e-2",
                 "--lora-dropout", "0", "--seed", "5", *METHOD_ARGS[method], *extra])
    assert code == 0
    return [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]


def _changed(before: dict, after_model) -> set:
    after = dict(after_model.named_parameters())
    return {k for k, v in before.items() if not torch.equal(v, after[k].detach())}


@pytest.mark.parametrize("method", ["lora", "ptuning", "freeze", "full"])
def test_method_losses_and_what_it_trains(method, tmp_path, tiny_models, dataset):
    model = tiny_models("llama")
    logs = run_train(dataset(), model, tmp_path / "out", method)
    losses = [r["loss"] for r in logs]
    assert len(losses) == 3 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses == pytest.approx(RECORDED[method], rel=2e-3), losses
    assert losses[-1] < losses[0]

    base = AutoModelForCausalLM.from_pretrained(model)
    before = {k: v.detach().clone() for k, v in base.named_parameters()}
    from instructglm.models.adapters import load_with_adapters

    tuned, _, _ = load_with_adapters(model, {"out": str(tmp_path / "out")})
    if method in ("lora", "ptuning"):
        tuned = tuned.merge_and_unload() if method == "lora" else tuned.get_base_model()
    changed = _changed(before, tuned)
    if method == "freeze":  # only the MLP of the last block
        assert changed and all(k.startswith("model.layers.1.mlp.") for k in changed), changed
        saved = load_file(str(tmp_path / "out" / "trainable.safetensors"))
        assert set(saved) == {k for k, _ in base.named_parameters() if k.startswith("model.layers.1.mlp.")}
    elif method == "full":
        assert len(changed) > len(before) // 2
    elif method == "lora":  # merged LoRA only touches the adapted linear layers
        assert changed and all(k.endswith("proj.weight") for k in changed), changed
    else:  # P-Tuning never changes a base weight
        assert changed == set()


def test_first_loss_is_the_untouched_model_loss(tiny_models, dataset):
    """Step 1 is logged before any update: it must equal the plain model's loss on those rows."""
    import datasets

    from instructglm.train.data import collate, epoch_batches

    model = AutoModelForCausalLM.from_pretrained(tiny_models("llama"))
    rows = datasets.load_from_disk(str(dataset()))[epoch_batches(12, 2, 5, 0)[0]]
    batch = collate(rows, 0)
    with torch.no_grad():
        loss = model(**batch).loss.item()
    assert loss == pytest.approx(RECORDED["lora"][0], rel=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_and_ptuning_work_on_every_family(arch, tmp_path, tiny_models, dataset):
    for method in ("lora", "ptuning"):
        # the whole dataset (12 rows) in every step: the loss on the same rows must go down
        logs = run_train(dataset(arch), tiny_models(arch), tmp_path / method, method, "--batch-size", "12",
                         "--lr-scheduler", "constant")
        assert len(logs) == 3 and logs[2]["loss"] < logs[1]["loss"] < logs[0]["loss"], (arch, method, logs)


def test_dry_run_prints_config_and_counts(tmp_path, tiny_models, dataset, capsys):
    # the largest seed allowed is one torch, numpy and random all take (the dry run seeds them);
    # key=value overrides may come after the flags
    code = main(["-q", "train", "--dataset", str(dataset()), "--model", tiny_models("llama"), "-o",
                 str(tmp_path / "o"), "--dry-run", "--lora-rank", "2", "--seed", str(2**32 - 1), "lora_alpha=3"])
    out = capsys.readouterr().out
    assert code == 0 and "lora_rank: 2" in out and "# trainable parameters:" in out
    assert "seed: 4294967295" in out and "lora_alpha: 3.0" in out
    assert not (tmp_path / "o").exists()


def test_eval_split_logs_eval_loss(tmp_path, tiny_models, dataset):
    logs = run_train(dataset(), tiny_models("llama"), tmp_path / "out", "lora", "--val-size", "0.25",
                     "--eval-steps", "2")
    evals = [r for r in logs if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 3] and all(r["eval_loss"] > 0 for r in evals)


def test_ptuning_cannot_be_merged(tmp_path, tiny_models, dataset, capsys):
    run_train(dataset(), tiny_models("llama"), tmp_path / "out", "ptuning")
    code = main(["merge", "--adapter", str(tmp_path / "out"), "-o", str(tmp_path / "m")])
    assert code == 2 and "cannot be merged" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["freeze", "full"])
def test_freeze_and_full_merge_to_a_plain_model(method, tmp_path, tiny_models, dataset):
    model = tiny_models("llama")
    run_train(dataset(), model, tmp_path / "out", method)
    assert main(["-q", "merge", "--adapter", str(tmp_path / "out"), "-o", str(tmp_path / "m")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert sum(p.numel() for p in merged.parameters()) == sum(
        p.numel() for p in AutoModelForCausalLM.from_pretrained(model).parameters())


def test_gradient_checkpointing_gives_the_same_losses(tmp_path, tiny_models, dataset):
    plain = run_train(dataset(), tiny_models("llama"), tmp_path / "a", "lora")
    ckpt = run_train(dataset(), tiny_models("llama"), tmp_path / "b", "lora", "--gradient-checkpointing")
    assert [r["loss"] for r in ckpt] == pytest.approx([r["loss"] for r in plain], rel=1e-5)
