"""eval stage: BLEU/ROUGE on hand-computed cases, per-category/base-vs-tuned evaluation, the CLI
(the HTML report: tests/report/test_report.py)."""

import json
import os
import subprocess
import sys

import pytest

from instructglm.errors import UserError
from instructglm.eval.evaluate import EvalConfig, evaluate, evaluate_rows, format_table
from instructglm.eval.metrics import bleu4, is_chinese, language, rouge, score, score_full
from instructglm.files import write_jsonl

# --------------------------------------------------------------------------------------------
# BLEU / ROUGE


def test_bleu_english_hand_computed():
    # hyp "the cat sat on the mat", ref "the cat is on the mat" (6 words each, so no brevity penalty):
    # 1-grams 5/6 (the x2, cat, on, mat), 2-grams 3/5 (the cat, on the, the mat), 3-grams 1/4 (on the mat),
    # 4-grams 0/3 -> exp smoothing 1/(2*3). BLEU = (5/6 * 3/5 * 1/4 * 1/6) ** (1/4)
    expected = 100 * (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25
    assert bleu4(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx(expected)


def test_bleu_chinese_is_character_level():
    # 我爱北京 vs 我爱上海 as characters: 1-grams 2/4, 2-grams 1/3, 3-grams 0/2 -> 1/(2*2),
    # 4-grams 0/1 -> 1/(4*1). As whole words (no segmentation) nothing would match at all.
    expected = 100 * (1 / 2 * 1 / 3 * 1 / 4 * 1 / 4) ** 0.25
    assert bleu4(["我爱北京"], ["我爱上海"]) == pytest.approx(expected)


def test_bleu_identical_and_disjoint():
    assert bleu4(["巴黎", "the cat sat on the mat"], ["巴黎", "the cat sat on the mat"]) == pytest.approx(100)
    # one-word answers only: no 2-, 3- or 4-grams in the corpus, so those orders are left out
    assert bleu4(["Paris", "Rome"], ["Paris", "Rome"]) == pytest.approx(100)
    assert bleu4(["dog runs fast"], ["cat sleeps here"]) == 0.0
    assert bleu4(["北京"], ["上海"]) == 0.0
    assert bleu4([], []) == 0.0


def test_rouge_hand_computed():
    # English words: unigram overlap 5 of 6 both ways; bigrams 3 of 5; LCS "the cat on the mat" = 5
    en = rouge(["the cat sat on the mat"], ["the cat is on the mat"])
    assert en == pytest.approx({"rouge1": 500 / 6, "rouge2": 60.0, "rougeL": 500 / 6})
    # Chinese characters: unigrams 我,爱 = 2 of 4; bigrams 我爱 = 1 of 3; LCS 我爱 = 2
    zh = rouge(["我爱北京"], ["我爱上海"])
    assert zh == pytest.approx({"rouge1": 50.0, "rouge2": 100 / 3, "rougeL": 50.0})
    # same characters, other order: all unigrams match; bigrams 我爱, 北京 = 2 of 3; LCS = 2 of 4
    swapped = rouge(["北京我爱"], ["我爱北京"])
    assert swapped == pytest.approx({"rouge1": 100.0, "rouge2": 200 / 3, "rougeL": 50.0})


def test_rouge_identical_disjoint_and_mean_over_rows():
    assert rouge(["我爱北京", "Good morning"], ["我爱北京", "good morning!"]) == pytest.approx(
        {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})
    assert rouge(["上海"], ["北京"]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    # mean over rows: one identical row (100) and one disjoint row (0)
    assert rouge(["a b", "x y"], ["a b", "c d"])["rouge1"] == pytest.approx(50.0)


def test_language_detection():
    assert is_chinese("冯刚（72岁）") and language("蝴蝶") == "zh"
    assert not is_chinese("Paris, 72!") and language("Paris") == "en" and language(None) == "en"


def test_score_full_extends_score():
    rows = [{"reference": "巴黎", "prediction": "巴黎"}, {"reference": "Rome", "prediction": "rome"},
            {"reference": "Oslo", "prediction": None}]
    full = score_full(rows, "prediction")
    assert {k: full[k] for k in score(rows, "prediction")} == score(rows, "prediction")
    # ROUGE lowercases English, so both rows match fully for ROUGE-1/L; ROUGE-2: 巴黎 is one character
    # bigram (100), "rome" has no bigram at all (0) -> mean 50
    assert (full["rouge1"], full["rouge2"], full["rougeL"]) == (100.0, 50.0, 100.0)
    # BLEU is case-sensitive: corpus 巴 黎 | rome vs 巴 黎 | Rome: 1-grams 2/3, 2-grams 1/1, no 3-grams
    assert full["bleu4"] == pytest.approx(round(100 * (2 / 3) ** 0.5, 1))


# --------------------------------------------------------------------------------------------
# evaluate: per category, per language, base vs tuned

ROWS = [
    {"reference": "巴黎", "prediction": "巴黎", "base_prediction": "巴黎市", "category": "capital"},
    {"reference": "Rome", "prediction": "Rome", "base_prediction": "rome", "category": "capital"},
    {"reference": "HELLO WORLD", "prediction": "HELLO WORLD", "base_prediction": "hello world",
     "category": "upper"},
    {"reference": "GOOD DAY", "prediction": "GOOD", "base_prediction": "GOOD DAY", "category": "upper"},
]


def _scores(block):
    return {system: block["scores"][system]["exact_match"] for system in block["scores"]}


def test_evaluate_rows_per_category_and_deltas():
    result = evaluate_rows(ROWS + [{"reference": None, "prediction": "x", "category": "upper"}])
    assert result["n"] == 4 and result["skipped_no_reference"] == 1
    assert result["systems"] == {"base": "base_prediction", "tuned": "prediction"}
    overall = result["overall"]
    assert _scores(overall) == {"base": 25.0, "tuned": 75.0} and overall["delta"]["tuned"]["exact_match"] == 50.0
    # base: "rome" and "hello world" match after normalisation, "GOOD DAY" exactly -> 3 of 4
    assert overall["scores"]["base"]["normalized_exact_match"] == 75.0
    cap, up = result["by_category"]["capital"], result["by_category"]["upper"]
    assert (cap["n"], _scores(cap), cap["delta"]["tuned"]["exact_match"]) == (2, {"base": 0.0, "tuned": 100.0}, 100.0)
    assert (_scores(up), up["delta"]["tuned"]["exact_match"]) == ({"base": 50.0, "tuned": 50.0}, 0.0)
    for block in (overall, cap, up):
        for metric, delta in block["delta"]["tuned"].items():
            assert delta == pytest.approx(block["scores"]["tuned"][metric] - block["scores"]["base"][metric], abs=0.051)
    # ROUGE-1 tuned for "upper": row 1 identical (100); "GOOD" vs "GOOD DAY": P 1, R 1/2, F 2/3
    assert up["scores"]["tuned"]["rouge1"] == pytest.approx(round((100 + 200 / 3) / 2, 1))
    assert {lang: b["n"] for lang, b in result["by_language"].items()} == {"en": 3, "zh": 1}
    assert result["by_language"]["zh"]["scores"]["base"]["exact_match"] == 0.0


def test_evaluate_rows_without_base_or_category():
    rows = [{"reference": r["reference"], "prediction": r["prediction"]} for r in ROWS]
    result = evaluate_rows(rows)
    assert set(result["overall"]) == {"n", "scores"} and list(result["systems"]) == ["tuned"]
    assert "by_category" not in result
    table = format_table(result)
    assert "tuned" in table and "delta" not in table
    with pytest.raises(UserError):
        evaluate_rows([{"reference": None, "prediction": "x"}])
    with pytest.raises(UserError, match="no prediction column to score"):
        evaluate_rows([{"reference": "a", "answer": "a"}])


# One adapter per task (infer --adapter zh=... --adapter up=... --compare-base): prediction_NAME columns.
MULTI = [{"reference": r["reference"], "base_prediction": r["base_prediction"], "category": r["category"],
          "prediction_zh": r["prediction"], "prediction_up": r["reference"].upper()} for r in ROWS]


def test_every_adapter_column_is_scored_side_by_side():
    result = evaluate_rows(MULTI)
    assert result["systems"] == {"base": "base_prediction", "zh": "prediction_zh", "up": "prediction_up"}
    overall = result["overall"]
    # up: 巴黎 and the two upper-case rows are exact, ROME is not -> 3 of 4
    assert _scores(overall) == {"base": 25.0, "zh": 75.0, "up": 75.0}
    assert {s: d["exact_match"] for s, d in overall["delta"].items()} == {"zh": 50.0, "up": 50.0}
    assert _scores(result["by_category"]["capital"]) == {"base": 0.0, "zh": 100.0, "up": 50.0}
    assert _scores(result["by_category"]["upper"]) == {"base": 50.0, "zh": 50.0, "up": 100.0}
    lines = format_table(result).splitlines()
    assert lines[2].split() == ["metric", "base", "zh", "up", "delta_zh", "delta_up"]
    em_line = next(line for line in lines if line.strip().startswith("exact match"))
    assert em_line.split()[-5:] == ["25.0", "75.0", "75.0", "+50.0", "+50.0"]
    upper = next(line for line in lines if line.strip().startswith("upper"))
    assert upper.split()[1:7] == ["2", "50.0", "50.0", "100.0", "+0.0", "+50.0"]


def test_adapter_named_like_a_fixed_system_keeps_its_column_name():
    rows = [{"reference": "a", "prediction_base": "a", "prediction": "b"}]
    result = evaluate_rows(rows)
    assert result["systems"] == {"tuned": "prediction", "prediction_base": "prediction_base"}
    assert "delta" not in result["overall"]  # no base model answers: nothing to take deltas against


def test_a_system_without_answers_in_a_group_is_left_out_of_it():
    rows = [{"reference": "a", "prediction_x": "a", "category": "one"},
            {"reference": "b", "prediction_y": "b", "category": "two"}]
    result = evaluate_rows(rows)
    assert list(result["by_category"]["one"]["scores"]) == ["x"]
    assert "-" in format_table(result).splitlines()[-1].split()


def test_evaluate_writes_json(tmp_path):
    write_jsonl(tmp_path / "pred.jsonl", ROWS)
    result = evaluate(EvalConfig(predictions=str(tmp_path / "pred.jsonl"), output=str(tmp_path / "m" / "out.json")))
    assert json.loads((tmp_path / "m" / "out.json").read_text(encoding="utf-8")) == result
    (tmp_path / "bad.jsonl").write_text('{"reference": "a"}\nnot json\n')
    with pytest.raises(UserError, match="bad.jsonl:2"):
        evaluate(EvalConfig(predictions=str(tmp_path / "bad.jsonl")))


def test_cli_eval(tmp_path):
    write_jsonl(tmp_path / "pred.jsonl", ROWS)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "instructglm", "eval", "pred.jsonl", "-o", "metrics.json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for text in ("exact match", "BLEU-4", "ROUGE-L", "delta", "capital", "upper"):
        assert text in proc.stdout
    em_line = next(line for line in proc.stdout.splitlines() if line.strip().startswith("exact match"))
    assert em_line.split()[-3:] == ["25.0", "75.0", "+50.0"]
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["overall"]["delta"]["tuned"]["exact_match"] == 50.0
    proc = subprocess.run([sys.executable, "-m", "instructglm", "eval", "missing.jsonl"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not found" in proc.stderr
