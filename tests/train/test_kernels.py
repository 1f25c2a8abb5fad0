"""Liger kernels (``train --liger``): chosen only where they can run, and numerically the same
training as without them. Triton has no CPU backend, so the kernels run here in Triton's interpreter
(tests/helpers/liger_interpreted.py); on a GPU the same code runs compiled."""

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sample_data import ALPACA_ROWS
from instructglm.convert.convert import ConvertConfig, convert_files
from instructglm.tokenize.tokenize import TokenizeConfig, tokenize_file
from instructglm.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def test_auto_is_off_without_a_gpu_and_on_says_why(tiny_models, monkeypatch, caplog):
    from instructglm.models.loading import load_model
    from instructglm.train.kernels import FUSED_CE_ATTR, apply_liger

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = load_model(tiny_models("llama"))
    with caplog.at_level(logging.INFO, logger="instructglm.train.kernels"):
        assert apply_liger(model, "auto") is False
    assert "Liger kernels not used: Liger's Triton kernels need a CUDA GPU" in caplog.text
    assert apply_liger(model, "off") is False
    with pytest.raises(UserError, match="liger=on: Liger's Triton kernels need a CUDA GPU"):
        apply_liger(model, "on")
    assert not hasattr(model, FUSED_CE_ATTR)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_liger_training_matches_the_unfused_path(tmp_path, tiny_models, arch):
    pytest.importorskip("liger_kernel", reason="liger-kernel is in the test extra: pip install -e '.[test]'")
    model = tiny_models(arch)
    (tmp_path / "a.json").write_text(json.dumps(ALPACA_ROWS * 2, ensure_ascii=False), encoding="utf-8")
    convert_files(ConvertConfig(inputs=[str(tmp_path / "a.json")], output=str(tmp_path / "a.jsonl")))
    tokenize_file(TokenizeConfig(input=str(tmp_path / "a.jsonl"), output=str(tmp_path / "tok"), model=model))
    args = ["train", "--dataset", str(tmp_path / "tok"), "--model", model, "--max-steps", "2", "--logging-steps", "1",
            "--batch-size", "4", "--lora-dropout", "0", "--learning-rate", "5e-3"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    runs = {}
    for name, entry, mode in (("plain", ["-m", "instructglm"], "off"),
                              ("liger", [str(ROOT / "tests" / "helpers" / "liger_interpreted.py")], "on")):
        proc = subprocess.run([sys.executable, *entry, *args, "-o", str(tmp_path / name), "--liger", mode],
                              capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = [json.loads(x) for x in (tmp_path / name / "trainer_log.jsonl").read_text().splitlines()]
    assert f"Liger kernels applied ({'gemma3_text' if arch == 'gemma3' else arch})" in proc.stderr
    calls = json.loads(re.search(r"liger kernel calls: (\{.*\})", proc.stderr).group(1))
    mlp = "LigerGELUMulFunction" if arch == "gemma3" else "LigerSiLUMulFunction"
    for kernel in ("LigerRMSNormFunction", "LigerRopeFunction", mlp, "LigerFusedLinearCrossEntropyFunction"):
        assert calls.get(kernel, 0) > 0, calls  # the Liger path really ran
    assert len(runs["liger"]) == len(runs["plain"]) == 2
    for a, b in zip(runs["plain"], runs["liger"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)
