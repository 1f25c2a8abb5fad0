import json

import datasets
import pytest

from conftest import ALPACA_ROWS
from instructglm.data.convert import ConvertConfig, convert_files
from instructglm.data.templates import Segment, get_template
from instructglm.data.tokenize import (IGNORE_INDEX, SegmentEncoder, TokenizeConfig, apply_length_policy,
                                       tokenize_file)
from instructglm.errors import UserError


def test_alpaca_template_renders_the_seed_format():
    t = get_template("alpaca")
    msgs = [{"role": "user", "content": "T\n\nhello", "instruction": "T", "input": "hello"},
            {"role": "assistant", "content": "HELLO"}]
    assert t.render(msgs) == [Segment("### Instruction:\nT\n\n### Input:\nhello\n\n### Response:\n", False),
                              Segment("HELLO", True)]
    msgs = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A model."}]
    assert t.render(msgs)[0].text == "### Instruction:\nWho are you?\n\n### Response:\n"
    assert t.prompt(msgs) == [Segment("### Instruction:\nWho are you?\n\n### Response:\n", False)]


def test_template_cut_stops_at_turn_marker():
    t = get_template("alpaca")
    assert t.cut(" Paris\n\n### Instruction:\nmore") == "Paris"
    with pytest.raises(UserError, match="unknown template"):
        get_template("nope")


@pytest.fixture()
def canonical(tmp_path):
    src = tmp_path / "a.json"
    src.write_text(json.dumps(ALPACA_ROWS, ensure_ascii=False), encoding="utf-8")
    convert_files(ConvertConfig(inputs=[str(src)], output=str(tmp_path / "a.jsonl")))
    return tmp_path / "a.jsonl"


def test_labels_are_exactly_the_response_plus_eos(tmp_path, canonical, tiny_models, tokenizer):
    out = tmp_path / "tok"
    stats = tokenize_file(TokenizeConfig(input=str(canonical), output=str(out), model=tiny_models("llama")))
    ds = datasets.load_from_disk(str(out))
    assert ds.column_names == ["input_ids", "labels"] and len(ds) == 4
    for row, src in zip(ds, ALPACA_ROWS):
        ids, labels = row["input_ids"], row["labels"]
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        trained = [x for x in labels if x != IGNORE_INDEX]
        assert tokenizer.decode(trained) == src["output"] + tokenizer.eos_token
        first = next(i for i, x in enumerate(labels) if x != IGNORE_INDEX)
        assert labels[first:] == ids[first:]  # the trained span is one contiguous tail
        assert "### Response:" in tokenizer.decode(ids[:first])
    assert stats["rows_in"] == stats["rows_out"] == 4 and stats["rows_skipped"] == 0
    saved = json.loads((out / "stats.json").read_text())
    assert saved["length_after"]["max"] == max(len(r) for r in ds["input_ids"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["template"] == "alpaca" and len(manifest["tokenizer"]) == 16


def test_multi_turn_trains_every_assistant_turn(tokenizer):
    t = get_template("alpaca")
    msgs = [{"role": "user", "content": "a?"}, {"role": "assistant", "content": "one"},
            {"role": "user", "content": "b?"}, {"role": "assistant", "content": "two"}]
    ((ids, labels),) = SegmentEncoder(tokenizer).encode([t.render(msgs)])
    trained = [x for x in labels if x != IGNORE_INDEX]
    assert tokenizer.decode(trained) == f"one{tokenizer.eos_token}two{tokenizer.eos_token}"


def test_length_policies():
    ids, labels = list(range(10)), [IGNORE_INDEX] * 6 + [6, 7, 8, 9]
    assert apply_length_policy(ids, labels, 10, "skip", eos=99)[2] == "kept"
    assert apply_length_policy(ids, labels, 8, "skip", eos=99) == (None, None, "skipped")
    got_ids, got_labels, action = apply_length_policy(ids, labels, 8, "truncate", eos=99)
    assert action == "truncated" and got_ids == [0, 1, 2, 3, 4, 5, 6, 99] and got_labels[-2:] == [6, 99]
    # a cut inside the prompt leaves nothing to train on: the row is skipped, never kept empty
    assert apply_length_policy(ids, labels, 5, "truncate", eos=99)[2] == "skipped"


def test_overlength_skip_counts_and_all_skipped_is_an_error(tmp_path, canonical, tiny_models):
    model = tiny_models("llama")
    full = tokenize_file(TokenizeConfig(input=str(canonical), output=str(tmp_path / "t0"), model=model))
    lengths = full["length_after"]
    cut = (lengths["min"] + lengths["max"]) // 2
    stats = tokenize_file(TokenizeConfig(input=str(canonical), output=str(tmp_path / "t1"), model=model,
                                         max_seq_length=cut))
    assert 1 <= stats["rows_skipped"] < 4 and stats["rows_out"] + stats["rows_skipped"] == 4
    assert stats["length_after"]["max"] <= cut < stats["length_before"]["max"]
    with pytest.raises(UserError, match="no rows left"):
        tokenize_file(TokenizeConfig(input=str(canonical), output=str(tmp_path / "t2"), model=model,
                                     max_seq_length=8))
    assert not (tmp_path / "t2").exists()


def test_refuses_to_overwrite_a_foreign_directory(tmp_path, canonical, tiny_models):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(UserError, match="not a tokenized dataset"):
        tokenize_file(TokenizeConfig(input=str(canonical), output=str(precious), model=tiny_models("llama")))
    assert (precious / "thesis.txt").read_text() == "do not delete"
