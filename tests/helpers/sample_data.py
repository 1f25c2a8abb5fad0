"""Our own small bilingual Alpaca rows, and the one way tests turn them into a tokenized dataset."""

from __future__ import annotations

import json
from pathlib import Path

ALPACA_ROWS = [
    {"instruction": "Who are you?", "input": "", "output": "I am a tiny model."},
    {"instruction": "把下面的英文转换成大写字母", "input": "good morning", "output": "GOOD MORNING", "category": "upper"},
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris"},
    {"instruction": "你是谁？", "input": "", "output": "我是一个测试模型。"},
]


def tokenized_dataset(root: Path, model: str, rows: list[dict] | None = None, **tokenize_options) -> Path:
    """convert + tokenize ``rows`` (default: ALPACA_ROWS x 3) into ``root/tok``; returns that directory."""
    from instructglm.convert import ConvertConfig, convert_files
    from instructglm.tokenize import TokenizeConfig, tokenize_file

    root.mkdir(parents=True, exist_ok=True)
    (root / "a.json").write_text(json.dumps(rows if rows is not None else ALPACA_ROWS * 3, ensure_ascii=False),
                                 encoding="utf-8")
    convert_files(ConvertConfig(inputs=[str(root / "a.json")], output=str(root / "a.jsonl")))
    tokenize_file(TokenizeConfig(input=str(root / "a.jsonl"), output=str(root / "tok"), model=model,
                                 **tokenize_options))
    return root / "tok"
