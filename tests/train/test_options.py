"""TrainConfig is built from option groups, but every user-facing key stays flat: flags (and their
aliases), YAML keys, ``key=value`` overrides, ``train_config.yaml`` and ``load_config`` keywords."""

import argparse

import pytest

from instructglm.config import add_arguments, load_config, options, to_yaml
from instructglm.errors import UserError
from instructglm.train import TrainConfig
from instructglm.train.methods import LoraOptions, get_method


def _parse(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainConfig)
    return parser, vars(parser.parse_args(list(argv)))


def test_flags_and_aliases_fill_the_groups():
    _, flags = _parse("--dataset", "d", "-o", "o", "--lora_rank", "4", "--lora-alpha", "8", "--no-packing",
                      "--batch-size", "3", "--learning_rate", "1e-3", "--fp16", "--seed", "7")
    cfg = load_config(TrainConfig, flags=flags)
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.performance.packing) == (4, 8.0, False)
    assert (cfg.schedule.per_device_train_batch_size, cfg.optimizer.learning_rate, cfg.seed) == (3, 1e-3, 7)
    assert cfg.performance.precision == "fp16"  # the fp16 switch resolves in the group's own check


def test_yaml_round_trip_is_flat(tmp_path):
    cfg = load_config(TrainConfig, None, ["lora_rank=16", "pre_seq_len=8", "freeze_modules=attn"],
                      dataset="d", output_dir="o", eval_dataset="e", eval_steps=5)
    text = to_yaml(cfg)
    assert "lora_rank: 16\n" in text and "freeze_modules: attn\n" in text and "\nlora:" not in text
    (tmp_path / "c.yaml").write_text(text)
    again = load_config(TrainConfig, tmp_path / "c.yaml")
    assert again == cfg and to_yaml(again) == text


def test_every_key_is_unique_and_flat():
    keys = list(options(TrainConfig))
    assert len(keys) == len(set(keys)) == 45  # as before the groups
    assert {"lora_rank", "lora_dora", "pre_seq_len", "freeze_trainable_layers", "learning_rate", "save_steps",
            "precision", "val_size", "dry_run"} <= set(keys)


def test_help_lists_options_by_group():
    parser, _ = _parse()
    text = parser.format_help()
    for heading in ("lora options", "ptuning options", "optimizer options", "checkpoints options"):
        assert heading in text
    assert "--lora-rank LORA_RANK, --lora_rank LORA_RANK" in text


def test_groups_check_their_own_fields():
    with pytest.raises(UserError, match="lora_rank: must be at least 1, got 0"):
        LoraOptions(rank=0)
    with pytest.raises(UserError, match="freeze_trainable_layers: 0 leaves nothing to train"):
        load_config(TrainConfig, dataset="d", output_dir="o", method="freeze", freeze_trainable_layers=0)
    with pytest.raises(UserError, match="method freeze; use lora"):
        load_config(TrainConfig, dataset="d", output_dir="o", method="freeze", load_in="4bit")


def test_methods_registry():
    assert get_method("lora").options_of(load_config(TrainConfig, dataset="d", output_dir="o")).rank == 8
    assert get_method("full").OPTIONS is None and not get_method("ptuning").MERGEABLE
    with pytest.raises(UserError, match="choose one of lora, ptuning, freeze, full"):
        get_method("bitfit")
