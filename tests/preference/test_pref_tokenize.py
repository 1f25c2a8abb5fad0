"""Tokenized pairs: the prompt once, both answers masked as in SFT, a length policy that keeps the pair together."""

from __future__ import annotations

import datasets
import pytest

from pref_data import DATA, tokenize_pairs, write_pairs
from instructglm.constants import IGNORE_INDEX
from instructglm.convert import ConvertConfig
from instructglm.convert.pref_files import convert_preference_files
from instructglm.errors import UserError
from instructglm.record import Message
from instructglm.templates import get_template
from instructglm.tokenize import SegmentEncoder, read_manifest
from instructglm.tokenize.pairs import fit_pair, is_preference_dataset


def _sft_row(tokenizer, messages):
    return SegmentEncoder(tokenizer).encode([get_template("alpaca").render(messages)])[0]


def test_pairs_equal_the_sft_encoding_of_each_side(tmp_path, tiny_models, tokenizer):
    canonical = tmp_path / "c.jsonl"
    convert_preference_files(ConvertConfig(inputs=[], output=str(canonical)),
                             [DATA / "sharegpt.jsonl", DATA / "kto.jsonl"])
    out = tokenize_pairs(tmp_path, tiny_models("llama"), canonical)
    rows = datasets.load_from_disk(str(out))
    assert is_preference_dataset(read_manifest(out)) and list(rows["label"]) == [-1, -1, 1, 0]
    second = rows[1]  # system + earlier turn in the prompt, answered "二。" / "三。"
    prompt = [Message("system", "你是一个助手。"), Message("user", "你好"), Message("assistant", "你好！"),
              Message("user", "一加一等于几？")]
    for side, text in (("chosen", "二。"), ("rejected", "三。")):
        ids, labels = _sft_row(tokenizer, prompt + [Message("assistant", text)])
        assert second["prompt_ids"] + second[f"{side}_ids"] == ids
        p = len(second["prompt_ids"])
        assert second[f"{side}_labels"] == labels[p:] and labels[p:][-1] == tokenizer.eos_token_id
    assert all(x != IGNORE_INDEX for x in second["chosen_labels"])
    assert rows[2]["rejected_ids"] == [] and rows[3]["label"] == 0
    stats = __import__("json").loads((out / "stats.json").read_text())
    assert (stats["pairs"], stats["desirable"], stats["undesirable"]) == (2, 1, 1)
    assert stats["length_chosen"]["max"] >= stats["length_chosen"]["min"] > 0 and stats["length_rejected"]
    assert stats["length_after"]["max"] == max(len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"]))
                                               for r in rows)


def test_show_marks_both_answers(tmp_path, tiny_models):
    from instructglm.tokenize import TokenizeConfig
    from instructglm.tokenize.pairs import tokenize_preferences

    src = write_pairs(tmp_path / "p.jsonl", [("What is 2 + 3?", "5", "six")])
    result = tokenize_preferences(TokenizeConfig(input=str(src), output=str(tmp_path / "t"), model=tiny_models("llama"),
                                                 show=1))
    chosen, rejected = result["examples"]
    assert "chosen" in chosen and "[[5" in chosen and "rejected" in rejected and "[[six" in rejected
    assert "What is 2 + 3?" in chosen and "[[" not in chosen.split("### Response:")[0]


def test_length_policy_keeps_the_pair_together():
    prompt = list(range(100, 120))  # 20 prompt tokens
    short, long_ = ([1, 2, 9], [1, 2, 9], 1), ([3] * 9 + [9], [3] * 9 + [9], 1)
    assert fit_pair(prompt, [short, long_], 30, "skip")[2] == "kept"
    assert fit_pair(prompt, [short, long_], 29, "skip") == (None, None, "skipped")
    assert fit_pair(prompt, [short, long_], 29, "fail")[2] == "overlong"
    p, answers, action = fit_pair(prompt, [short, long_], 25, "truncate", keep_tail=3)
    assert action == "truncated_prompt" and len(p) == 15 and p[:12] == prompt[:12] and p[-3:] == prompt[-3:]
    assert answers == [short, long_]
    p, answers, action = fit_pair(prompt, [short, long_], 12, "truncate", keep_tail=3)
    assert action == "truncated_response" and len(p) == 6 and p[-3:] == prompt[-3:]
    assert answers[0][:2] == (short[0], short[1]) and answers[1][0] == [3] * 5 + [9]


def test_overlong_fail_names_the_line_and_skip_counts(tmp_path, tiny_models):
    src = write_pairs(tmp_path / "p.jsonl", [("q", "a", "b"), ("long " * 200, "a", "b")])
    with pytest.raises(UserError, match=r"p\.jsonl:2: longer than max_seq_length=64"):
        tokenize_pairs(tmp_path, tiny_models("llama"), src, max_seq_length=64, overlength="fail")
    out = tokenize_pairs(tmp_path, tiny_models("llama"), src, max_seq_length=64)
    assert len(datasets.load_from_disk(str(out))) == 1
    out = tokenize_pairs(tmp_path / "t", tiny_models("llama"), src, max_seq_length=64, overlength="truncate")
    rows = datasets.load_from_disk(str(out))
    assert all(len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) <= 64 for r in rows)


def test_an_sft_record_is_refused_with_its_line(tmp_path, tiny_models):
    src = tmp_path / "sft.jsonl"
    src.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    with pytest.raises(UserError, match=r"sft\.jsonl:1: not a canonical preference record"):
        tokenize_pairs(tmp_path, tiny_models("llama"), src)


def test_preference_files_are_recognised(tmp_path):
    from instructglm.tokenize.pairs import is_preference_file

    pairs = write_pairs(tmp_path / "p.jsonl", [("q", "a", "b")])
    sft = tmp_path / "s.jsonl"
    sft.write_text('\n{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    assert is_preference_file(pairs) and not is_preference_file(sft)
