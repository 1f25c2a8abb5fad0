"""Training on ``tokenize --stage pt`` rows through the normal (SFT) path, packed: the loss is the
per-document loss, documents never attend to each other, and the real CLI learns from plain text."""

import json
import shlex
import typing
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM

from instructglm.tokenize import TokenizeConfig, tokenize_file
from instructglm.train import methods
from instructglm.train.loss import batch_loss_sum
from instructglm.train.packing import attention_mask_for, collate_packed

CORPUS = Path(__file__).parents[1] / "data" / "pretrain" / "bilingual.txt"


@pytest.fixture(scope="module")
def pt_rows(tmp_path_factory, tiny_models):
    """The corpus tokenized for pretraining with short rows, so that long documents are split too."""
    out = tmp_path_factory.mktemp("pt") / "tok"
    stats = tokenize_file(TokenizeConfig(input=str(CORPUS), output=str(out), model=tiny_models("llama"),
                                         stage="pt", max_seq_length=24))
    assert stats["documents_split"] >= 2
    return datasets.load_from_disk(str(out))[:]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])  # gemma3: sliding-window layers too (window 16 < 24)
def test_packed_loss_is_the_token_weighted_mean_of_per_document_losses(arch, impl, tiny_models, pt_rows):
    model = AutoModelForCausalLM.from_pretrained(tiny_models(arch), attn_implementation=impl).eval()
    batch = collate_packed(pt_rows, pad_id=0, pack_length=64)
    assert batch["input_ids"].shape[0] < len(pt_rows["input_ids"])  # several documents share a row
    with torch.no_grad():
        total, n = batch_loss_sum(model, methods.get_method("lora"), batch)
        # each document alone, through transformers' own loss (a mean over its len - 1 targets)
        alone = [(model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss, len(ids) - 1)
                 for ids in pt_rows["input_ids"]]
    assert n == sum(k for _, k in alone)
    expected = sum(loss * k for loss, k in alone) / n
    torch.testing.assert_close(total / n, expected, rtol=1e-5, atol=1e-5)


def _logits(model, batch, mask):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"]).logits


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_documents_in_a_packed_row_never_attend_across(impl, tiny_models, pt_rows):
    model = AutoModelForCausalLM.from_pretrained(tiny_models("llama"), attn_implementation=impl).eval()
    first, second = pt_rows["input_ids"][0], pt_rows["input_ids"][1]
    cols = {"input_ids": [first, second], "labels": [first, second]}
    batch = collate_packed(cols, pad_id=0, pack_length=128)
    assert batch["input_ids"].shape[0] == 1  # one row holding both documents
    seg = batch["segments"][0]
    early, late = seg == seg[0], seg == 1 - seg[0]  # the document laid first, and the one after it
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    g = torch.Generator().manual_seed(0)
    changed["input_ids"][0, early] = (batch["input_ids"][0, early] + torch.randint(
        1, 50, (int(early.sum()),), generator=g)) % model.config.vocab_size

    block = attention_mask_for(model.config, batch["segments"], torch.float32)
    before, after = _logits(model, batch, block), _logits(model, changed, block)
    torch.testing.assert_close(after[0, late], before[0, late], rtol=0, atol=1e-5)
    assert (after[0, early] - before[0, early]).abs().max() > 1e-2  # the change did reach the first document
    alone_ids = torch.tensor([cols["input_ids"][int(seg[late][0])]])
    with torch.no_grad():
        alone = model(input_ids=alone_ids).logits
    torch.testing.assert_close(before[0, late], alone[0], rtol=1e-5, atol=1e-5)  # as if it were alone

    # the check can fail: with one causal mask over the whole row the later document sees the change
    plain = torch.ones_like(batch["input_ids"])
    leaked = _logits(model, changed, plain)[0, late] - _logits(model, batch, plain)[0, late]
    assert leaked.abs().max() > 1e-3


def _stage_flags() -> list[str]:
    """``--stage pt`` once ``train`` knows it (train/options.py); until then pt rows train as SFT rows."""
    from instructglm.train.options import TrainConfig

    stages = typing.get_args(typing.get_type_hints(TrainConfig)["stage"])
    return ["--stage", "pt"] if "pt" in stages else []


@pytest.mark.slow
def test_cli_tokenize_pt_then_train_lowers_the_loss(tmp_path, monkeypatch, tiny_models):
    from instructglm.cli import main

    model = tiny_models("llama")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text(CORPUS.read_text(encoding="utf-8"), encoding="utf-8")
    assert main(shlex.split(f"tokenize corpus.txt -o pt --stage pt --max-seq-length 32 --model {model}")) == 0
    manifest = json.loads((tmp_path / "pt" / "manifest.json").read_text())
    assert manifest["stage"] == "pt"
    argv = shlex.split(f"train --dataset pt --model {model} --output-dir out --lora_rank 8 --lora-dropout 0 "
                       f"--per_device_train_batch_size 4 --max_steps 16 --learning_rate 1e-2 --logging_steps 4 "
                       f"--save_steps 0 --seed 7")
    assert main(argv + _stage_flags()) == 0
    logs = [json.loads(line) for line in (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logs if "loss" in r]
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0], losses
    info = json.loads((tmp_path / "out" / "instructglm.json").read_text())
    assert info["template"] is None  # no template was trained: infer's default applies
