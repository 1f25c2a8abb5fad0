"""Damaged checkpoints on resume, through the real CLI: every missing, cut-short or wrong file is one
line naming it (exit 2, no traceback), and nothing in the run directory is deleted or changed."""

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from instructglm.cli import main
from instructglm.train.lock import LOCK

pytestmark = pytest.mark.slow


def _args(dataset, out, model, *extra):
    return ["-q", "train", "--dataset", str(dataset), "-o", str(out), "--model", model, "--lora-rank", "2",
            "--batch-size", "2", "--logging-steps", "1", "--max-steps", "3", "--seed", "5", *extra]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, tokenized, tiny_models):
    """A run directory whose checkpoint-2 is whole (the run went on to step 3)."""
    out = tmp_path_factory.mktemp("pristine") / "run"
    model, dataset = tiny_models("llama"), tokenized("llama")
    assert main(_args(dataset, out, model, "--save-steps", "2")) == 0
    return out, model, dataset


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {
    "optimizer missing": ("optimizer.pt", lambda p: p.unlink(), "file not found"),
    "optimizer cut short": ("optimizer.pt", _truncate, "damaged or unreadable"),
    "optimizer of another kind": ("optimizer.pt", lambda p: torch.save({"state": {}, "param_groups": 3}, p),
                                  "optimizer state does not fit"),
    "scheduler missing": ("scheduler.pt", lambda p: p.unlink(), "file not found"),
    "scheduler cut short": ("scheduler.pt", _truncate, "damaged or unreadable"),
    "scheduler random bytes": ("scheduler.pt", lambda p: p.write_bytes(bytes(range(256)) * 4), "damaged"),
    "scheduler of another kind": ("scheduler.pt", lambda p: torch.save([1, 2], p), "damaged or unreadable"),
    "rng missing": ("rng.safetensors", lambda p: p.unlink(), "file not found"),
    "rng cut short": ("rng.safetensors", _truncate, "damaged or truncated"),
    "rng of another kind": ("rng.safetensors", lambda p: save_file({"cpu": torch.zeros(3)}, str(p)),
                            "damaged or unreadable"),
    "adapter missing": ("adapter_model.safetensors", lambda p: p.unlink(), "file not found"),
    "adapter cut short": ("adapter_model.safetensors", _truncate, "damaged or truncated"),
    "trainer state not JSON": ("trainer_state.json", lambda p: p.write_text('{"step": 2, "logs": ['),
                               "not valid JSON"),
    "trainer state wrong fields": ("trainer_state.json", lambda p: p.write_text('{"step": "two"}'), "damaged"),
}


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_checkpoint_is_one_line_naming_the_file(case, pristine, tmp_path, capsys):
    source, model, dataset = pristine
    out = tmp_path / "run"
    shutil.copytree(source, out)
    name, damage, said = DAMAGE[case]
    damage(out / "checkpoint-2" / name)
    before = _files(out)
    code = main(_args(dataset, out, model, "--resume", "latest"))
    err = capsys.readouterr().err
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"checkpoint-2/{name}" in lines[0] and said in lines[0], lines[0]
    assert _files(out) == before  # nothing deleted or rewritten


def test_lora_rank_other_than_the_checkpoints(pristine, tmp_path, capsys):
    source, model, dataset = pristine
    out = tmp_path / "run"
    shutil.copytree(source, out)
    before = _files(out)
    code = main(_args(dataset, out, model, "--resume", "latest", "--lora-rank", "4"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "lora_rank (2 -> 4)" in err, err
    code = main(_args(dataset, out, model, "--resume", "latest", "--lora-rank", "4", "--resume-anyway"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err, err
    assert "checkpoint-2: the checkpoint's trained weights do not fit" in err and "[2, 64] in the checkpoint, " \
        "[4, 64] in this run" in err, err
    assert _files(out) == before


def test_identity_file_damaged(pristine, tmp_path, capsys):
    source, model, dataset = pristine
    out = tmp_path / "run"
    shutil.copytree(source, out)
    (out / "checkpoint-2" / "run_identity.json").write_text(json.dumps(["not", "an", "identity"]))
    code = main(_args(dataset, out, model, "--resume", "latest"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "checkpoint-2/run_identity.json: not a run identity" in err, err
