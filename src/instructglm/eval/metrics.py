"""Answer-level metrics that work for Chinese and English alike.

* exact match: the answer equals the reference once surrounding whitespace is stripped (case and
  punctuation count: "GOOD MORNING" is not "good morning"),
* normalised exact match: also ignoring case, surrounding punctuation and inner spacing,
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
    return float((prediction or "").strip() == (reference or "").strip())


def normalized_exact_match(prediction: str, reference: str) -> float:
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
    """Mean exact match, normalised exact match and char F1 (percent) of ``row[key]`` vs ``row['reference']``."""
    rows = [r for r in rows if r.get(key) is not None and r.get("reference") is not None]
    metrics = {"exact_match": exact_match, "normalized_exact_match": normalized_exact_match, "char_f1": char_f1}
    result = {"n": len(rows)}
    for name, fn in metrics.items():
        value = sum(fn(r[key], r["reference"]) for r in rows) / len(rows) if rows else 0.0
        result[name] = round(100 * value, 1)
    return result
