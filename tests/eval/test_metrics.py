import pytest

from instructglm.eval.metrics import char_f1, exact_match, normalized_exact_match, score


def test_exact_match_is_case_and_punctuation_sensitive():
    assert exact_match(" GOOD MORNING\n", "GOOD MORNING") == 1.0
    assert exact_match("good morning", "GOOD MORNING") == 0.0
    assert normalized_exact_match("good  morning.", "GOOD MORNING") == 1.0
    assert normalized_exact_match("巴黎。", "巴黎") == 1.0
    assert normalized_exact_match("巴黎市", "巴黎") == 0.0


def test_char_f1_hand_computed():
    # prediction chars {巴,黎,市}, reference {巴,黎}: precision 2/3, recall 1, F1 = 0.8
    assert char_f1("巴黎市", "巴黎") == pytest.approx(0.8)
    # "ab" vs "abcd" (spaces ignored): precision 1, recall 0.5 -> 2/3
    assert char_f1("a b", "abcd") == pytest.approx(2 / 3)
    assert char_f1("xyz", "abc") == 0.0 and char_f1("", "") == 1.0


def test_score_aggregates_in_percent():
    rows = [{"reference": "Paris", "prediction": "Paris"}, {"reference": "Rome", "prediction": "rome"},
            {"reference": "Oslo", "prediction": None}]
    s = score(rows, "prediction")
    assert s == {"n": 2, "exact_match": 50.0, "normalized_exact_match": 100.0, "char_f1": 100.0}
