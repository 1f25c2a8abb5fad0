"""Answer-level metrics that work for Chinese and English alike.

* exact match: the answer equals the reference once surrounding whitespace is stripped (case and
  punctuation count: "GOOD MORNING" is not "good morning"),
* normalised exact match: also ignoring case, surrounding punctuation and inner spacing,
* character-level F1 (bag of non-space characters), a forgiving overlap score that needs no word
  segmentation, so it treats Chinese and English the same way,
* BLEU-4 (``sacrebleu``) and ROUGE-1/2/L F-measure (``rouge-score``), tokenized per row by the
  reference's language: a row whose reference holds CJK ideographs is Chinese and is scored on
  characters (sacrebleu's ``zh`` tokenizer; one token per ideograph for ROUGE), any other row is
  English and is scored on words (sacrebleu's ``13a`` tokenizer; rouge-score's own tokenizer).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache

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


# --------------------------------------------------------------------------------------------
# BLEU / ROUGE (library scorers, language-aware tokenization)

_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef\U00030000-\U0003134f]")
_ROUGE_TOKEN_ZH = re.compile(_CJK.pattern + "|[a-z0-9]+")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def is_chinese(text: str | None) -> bool:
    """True when ``text`` contains at least one CJK ideograph."""
    return bool(_CJK.search(text or ""))


def language(reference: str | None) -> str:
    """``"zh"`` if the reference holds CJK ideographs, else ``"en"``."""
    return "zh" if is_chinese(reference) else "en"


@lru_cache(maxsize=None)
def _bleu_tokenizer(lang: str):
    """sacrebleu's tokenizer for a language: ``zh`` (one token per ideograph) or ``13a`` (words)."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

    return TokenizerZh() if lang == "zh" else Tokenizer13a()


def bleu4(predictions: list[str], references: list[str], languages: list[str] | None = None) -> float:
    """Corpus BLEU-4 (0-100) with sacrebleu; each row tokenized for its language (default: detected).

    Short answers are the norm here, so orders with no n-gram at all in the whole corpus are left out
    (sacrebleu's ``effective_order``; identical one-word answers score 100, not 0); an order with
    n-grams but no match is smoothed the standard way (``exp``, as in mteval-v13a).
    """
    from sacrebleu.metrics import BLEU

    if not predictions:
        return 0.0
    languages = languages or [language(r) for r in references]
    hyps = [_bleu_tokenizer(lang)((p or "").strip()) for p, lang in zip(predictions, languages)]
    refs = [_bleu_tokenizer(lang)((r or "").strip()) for r, lang in zip(references, languages)]
    return BLEU(tokenize="none", effective_order=True).corpus_score(hyps, [refs]).score


class _ChineseRougeTokenizer:
    """rouge-score tokenizer for Chinese rows: one token per ideograph, ASCII letter/digit runs as
    words, punctuation dropped (as rouge-score's default English tokenizer drops it)."""

    def tokenize(self, text: str) -> list[str]:
        return _ROUGE_TOKEN_ZH.findall(unicodedata.normalize("NFKC", text or "").lower())


@lru_cache(maxsize=None)
def _rouge_scorer(lang: str):
    import logging

    from rouge_score.rouge_scorer import RougeScorer

    tokenizer = _ChineseRougeTokenizer() if lang == "zh" else None
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.WARNING)  # hush its INFO line "Using default tokenizer."
    try:
        return RougeScorer(list(ROUGE_TYPES), use_stemmer=False, tokenizer=tokenizer)
    finally:
        absl_log.setLevel(level)


def rouge(predictions: list[str], references: list[str], languages: list[str] | None = None) -> dict:
    """Mean ROUGE-1/2/L F-measure (0-100) over rows, each row tokenized for its language."""
    if not predictions:
        return {t: 0.0 for t in ROUGE_TYPES}
    languages = languages or [language(r) for r in references]
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref, lang in zip(predictions, references, languages):
        scores = _rouge_scorer(lang).score(ref or "", pred or "")  # rouge-score takes (target, prediction)
        for t in ROUGE_TYPES:
            totals[t] += scores[t].fmeasure
    return {t: 100 * v / len(predictions) for t, v in totals.items()}


def score_full(rows: list[dict], key: str) -> dict:
    """:func:`score` plus BLEU-4 and ROUGE-1/2/L (percent, one decimal) of ``row[key]`` vs the reference."""
    result = score(rows, key)
    rows = [r for r in rows if r.get(key) is not None and r.get("reference") is not None]
    preds, refs = [r[key] for r in rows], [r["reference"] for r in rows]
    langs = [language(r) for r in refs]
    result["bleu4"] = round(bleu4(preds, refs, langs), 1)
    result.update({t: round(v, 1) for t, v in rouge(preds, refs, langs).items()})
    return result
