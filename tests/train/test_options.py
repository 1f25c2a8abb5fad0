"""TrainConfig is built from option groups, but every user-facing key stays flat: flags (and their
aliases), YAML keys, ``key=value`` overrides, ``train_config.yaml`` and ``load_config`` keywords."""

import argparse
import re

import pytest

from instructglm.config import _base_type, add_arguments, load_config, options, to_yaml
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
    assert len(keys) == len(set(keys)) >= 45  # (45 before the groups; later stages add theirs)
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


# options whose every finite value means something (the method's own check refuses 0 layers)
UNBOUNDED = {"freeze_trainable_layers"}


def test_every_number_option_declares_its_range():
    """A new number option states its range in ``opt(..., min=, max=, above=, below=)``: the one check
    (``instructglm.config.number_problem``) then refuses bad values from flags, overrides and YAML alike."""
    for key, option in options(TrainConfig).items():
        if _base_type(option.type)[0] in (int, float) and key not in UNBOUNDED:
            assert str(option.field.metadata["range"]), f"{key}: no range declared"


@pytest.mark.parametrize("key,value,words", [
    ("learning_rate", "nan", "learning_rate: must be a finite number, got nan"),
    ("max_grad_norm", "-inf", "max_grad_norm: must be a finite number"),
    ("lora_alpha", "NaN", "lora_alpha: must be a finite number"),
    ("seed", "-1", "seed: must be between 0 and 4294967295, got -1"),
    ("warmup_steps", "-3", "warmup_steps: must be >= 0"),
    ("logging_steps", "0", "logging_steps: must be at least 1"),
    ("num_epochs", "-1", "num_epochs: must be >= 0"),
])
def test_groups_declare_their_ranges(tmp_path, key, value, words):
    """The same check whether the value comes from a flag, an override or the YAML file (with its line)."""
    with pytest.raises(UserError, match=re.escape(words) + r".*\(flag --"):
        load_config(TrainConfig, dataset="d", output_dir="o", **{key: value})
    with pytest.raises(UserError, match=re.escape(words) + rf".*\(override {key}="):
        load_config(TrainConfig, None, [f"{key}={value}"], dataset="d", output_dir="o")
    (tmp_path / "c.yaml").write_text(f"dataset: d\noutput_dir: o\n{key}: {value}\n")
    with pytest.raises(UserError, match="c.yaml: " + re.escape(words) + r".*\(line 3\)"):
        load_config(TrainConfig, tmp_path / "c.yaml")


def test_the_edges_of_the_ranges_are_accepted():
    cfg = load_config(TrainConfig, None, ["seed=4294967295", "lora_dropout=0", "max_steps=-1", "save_total_limit=0"],
                      dataset="d", output_dir="o", learning_rate="1e-30", weight_decay=0, max_grad_norm=0)
    assert (cfg.seed, cfg.lora.dropout, cfg.optimizer.learning_rate, cfg.optimizer.max_grad_norm) == \
        (2**32 - 1, 0.0, 1e-30, 0.0)
