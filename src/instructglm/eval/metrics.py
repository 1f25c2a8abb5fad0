"""Answer-level metrics that work for Chinese and English alike.

* exact match after normalisation (case, surrounding whitespace and punctuation, inner spacing),
* character-level F1 (bag of non-space characters), a forgiving overlap score that needs no word
  segmentation, so it treats Chinese and English the same way.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

_EDGE_PUNCT = "。．.!！?？,，;；:：\"'“”‘’「」『』()（）[]【】 \t\r\n"


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text or "").strip().lower()
    text = re.sub(r"\s+", " ", text)
    return text.strip(_EDGE_PUNCT)


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def char_f1(prediction: str, reference: str) -> float:
    p = Counter(c for c in normalize(prediction) if not c.isspace())
    r = Counter(c for c in normalize(reference) if not c.isspace())
    common = sum((p & r).values())
    if not p or not r or not common:
        return float(not p and not r)
    precision, recall = common / sum(p.values()), common / sum(r.values())
    return 2 * precision * recall / (precision + recall)


def score(rows: list[dict], key: str) -> dict:
    """Mean exact match and char F1 (in percent) of ``row[key]`` against ``row['reference']``."""
    rows = [r for r in rows if r.get(key) is not None and r.get("reference") is not None]
    if not rows:
        return {"n": 0, "exact_match": 0.0, "char_f1": 0.0}
    em = sum(exact_match(r[key], r["reference"]) for r in rows) / len(rows)
    f1 = sum(char_f1(r[key], r["reference"]) for r in rows) / len(rows)
    return {"n": len(rows), "exact_match": round(100 * em, 1), "char_f1": round(100 * f1, 1)}
