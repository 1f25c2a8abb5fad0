"""Our bilingual preference pairs and the helpers that convert and tokenize them for a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).parent.parent / "data" / "preference"


def write_pairs(path: Path, pairs: list[tuple[str, str, str]]) -> Path:
    """Canonical preference JSONL from ``(question, chosen, rejected)`` triples."""
    with open(path, "w", encoding="utf-8") as f:
        for q, c, r in pairs:
            f.write(json.dumps({"messages": [{"role": "user", "content": q}],
                                "chosen": {"role": "assistant", "content": c},
                                "rejected": {"role": "assistant", "content": r}}, ensure_ascii=False) + "\n")
    return path


def tokenize_pairs(root: Path, model: str, source: Path, **options) -> Path:
    from instructglm.tokenize import TokenizeConfig
    from instructglm.tokenize.pairs import tokenize_preferences

    out = root / f"tok-{source.stem}"
    tokenize_preferences(TokenizeConfig(input=str(source), output=str(out), model=model, **options))
    return out


# Chosen answers are short and in the language of the question; rejected ones are long or in the other language.
TRAIN_PAIRS = [
    ("What is 2 + 3?", "5", "The answer is probably six, but I am not sure."),
    ("中国的首都是哪里？", "北京。", "The capital of China is Beijing."),
    ("Say yes.", "Yes.", "好的，我说是。"),
    ("用一个词形容大海", "辽阔", "The sea is very big and wide and blue."),
    ("Name a colour.", "Red.", "颜色有很多种，比如红色。"),
    ("你好吗？", "很好。", "I am fine, thank you, and you?"),
    ("What is the opposite of hot?", "Cold.", "冷。"),
    ("一加一等于几？", "二。", "One plus one equals two, of course."),
]
