"""``tokenize --stage pt``: plain text and ``text`` JSONL -> rows with every token trained, long documents
split (not dropped), a manifest that says ``stage: pt``, and the train-side stage check."""

import json
from pathlib import Path

import datasets
import pytest

from instructglm.errors import UserError
from instructglm.tokenize import TokenizeConfig, tokenize_file
from instructglm.tokenize.encode import SegmentEncoder
from instructglm.tokenize.pretrain import check_dataset_stage, read_documents, split_document

CORPUS = Path(__file__).parents[1] / "data" / "pretrain" / "bilingual.txt"


def _pt(tmp_path, model, src=CORPUS, name="pt", **kw):
    out = tmp_path / name
    stats = tokenize_file(TokenizeConfig(input=str(src), output=str(out), model=model, stage="pt", **kw))
    return out, stats


def test_documents_are_blank_line_blocks_or_lines_or_text_records(tmp_path):
    docs = list(read_documents(CORPUS))
    assert [line for line, _ in docs] == [1, 4, 7, 9, 12]
    assert docs[0][1] == "今天天气很好。我们去公园散步，\n看见湖边有很多人在钓鱼。"
    assert docs[4][1].endswith("-> GOOD MORNING.")
    per_line = list(read_documents(CORPUS, per_line=True))
    assert [line for line, _ in per_line] == [1, 2, 4, 5, 7, 9, 12, 13]
    assert per_line[1][1] == "看见湖边有很多人在钓鱼。"
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes("\ufeffone\r\ntwo\r\n\r\nthree\r\n".encode())
    assert list(read_documents(crlf)) == [(1, "one\ntwo"), (4, "three")]
    src = tmp_path / "t.jsonl"
    src.write_text('{"text": "第一篇。"}\n\n{"text": "", "id": 2}\n{"text": "second", "source": "x"}\n', encoding="utf-8")
    assert list(read_documents(src)) == [(1, "第一篇。"), (3, ""), (4, "second")]


def test_rows_are_the_documents_tokens_then_eos_all_trained(tmp_path, tiny_models, tokenizer):
    out, stats = _pt(tmp_path, tiny_models("llama"), max_seq_length=512)
    ds = datasets.load_from_disk(str(out))
    enc = SegmentEncoder(tokenizer)
    expected = [[*enc.prefix, *tokenizer(text, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
                for _, text in read_documents(CORPUS)]
    assert enc.prefix == [tokenizer.bos_token_id]
    assert ds["input_ids"] == expected
    assert ds["labels"] == ds["input_ids"]  # no template, no masking
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "pt" and manifest["template"] is None
    assert manifest["settings"] == {"stage": "pt", "max_seq_length": 512, "text_per_line": False}
    assert stats["documents_in"] == stats["rows_out"] == 5 and stats["documents_split"] == 0
    assert stats["trained_tokens"] == sum(len(r) - 1 for r in expected)
    assert json.loads((out / "stats.json").read_text())["stage"] == "pt"
    again = tokenize_file(TokenizeConfig(input=str(CORPUS), output=str(out), model=tiny_models("llama"), stage="pt",
                                         max_seq_length=512))
    assert again["up_to_date"]
    lines = tokenize_file(TokenizeConfig(input=str(CORPUS), output=str(out), model=tiny_models("llama"), stage="pt",
                                         max_seq_length=512, text_per_line=True))
    assert not lines["up_to_date"] and lines["rows_out"] == 8


def test_split_document_trains_every_token_but_the_first_once():
    ids = list(range(100, 137))
    for max_len in (2, 5, 8, 36, 37, 40):
        rows = split_document(ids, max_len)
        assert all(2 <= len(r) <= max_len for r in rows) or rows == [ids]
        targets = [t for r in rows for t in r[1:]]  # a row's first token is never a target
        assert targets == ids[1:], max_len
        assert rows[0][0] == ids[0] and rows[-1][-1] == ids[-1]


def test_long_documents_are_split_not_dropped(tmp_path, tiny_models, tokenizer):
    long_doc = "法国的首都是巴黎。The quick brown fox jumps over the lazy dog. " * 12
    src = tmp_path / "long.jsonl"
    src.write_text(json.dumps({"text": long_doc}, ensure_ascii=False) + "\n" + '{"text": "short one"}\n'
                   + '{"text": "  "}\n', encoding="utf-8")
    out, stats = _pt(tmp_path, tiny_models("llama"), src=src, max_seq_length=32)
    rows = datasets.load_from_disk(str(out))["input_ids"]
    assert max(len(r) for r in rows) == 32
    assert stats["documents_in"] == 3 and stats["documents_empty"] == 1 and stats["rows_skipped"] == 1
    assert stats["documents_split"] == 1 and stats["rows_from_split"] == len(rows) - 1 > 2
    assert "split into" in stats["note"] and "none dropped" in stats["note"]
    rebuilt = rows[0] + [t for r in rows[1:-1] for t in r[1:]]  # the rows overlap by one token
    assert rebuilt == [tokenizer.bos_token_id, *tokenizer(long_doc, add_special_tokens=False).input_ids,
                       tokenizer.eos_token_id]
    assert stats["tokens"] == len(rebuilt) + len(rows[-1])


@pytest.mark.parametrize("content, flags, message", [
    ('{"text": "ok"}\n{"body": "no text"}\n', {}, r"t.jsonl:2: no 'text' field \(body\)"),
    ('{"text": "ok"}\n{"text": 3}\n', {}, "t.jsonl:2: 'text' must be a string"),
    ('{"text": "ok"}\n{"text": \n', {}, "t.jsonl:2: invalid JSON"),
    ('{"text": "ok"}\n', {"text_per_line": True}, "--text-per-line: .*t.jsonl is JSON"),
])
def test_bad_json_input_names_file_and_line(tmp_path, tiny_models, content, flags, message):
    src = tmp_path / "t.jsonl"
    src.write_text(content)
    with pytest.raises(UserError, match=message):
        _pt(tmp_path, tiny_models("llama"), src=src, **flags)
    assert not (tmp_path / "pt").exists()


def test_bad_text_input_and_flags(tmp_path, tiny_models):
    model = tiny_models("llama")
    src = tmp_path / "c.txt"
    src.write_bytes(b"fine\n\nbad \xff byte\n")
    with pytest.raises(UserError, match=r"c.txt:3: not valid UTF-8"):
        _pt(tmp_path, model, src=src)
    src.write_text("\n \n\n")
    with pytest.raises(UserError, match="no text to train on"):
        _pt(tmp_path, model, src=src)
    with pytest.raises(UserError, match="c.txt: a text file.*--stage pt"):
        tokenize_file(TokenizeConfig(input=str(src), output=str(tmp_path / "sft"), model=model))
    with pytest.raises(UserError, match="--overlength.*not with --stage pt"):
        TokenizeConfig(input="x", output="y", stage="pt", overlength="truncate").validate()
    with pytest.raises(UserError, match="--text-per-line: only with --stage pt"):
        TokenizeConfig(input="x", output="y", text_per_line=True).validate()


def test_train_stage_check_keeps_pretraining_and_instruction_rows_apart(tmp_path, tiny_models, tokenized):
    from instructglm.tokenize import read_manifest
    from instructglm.tokenize.pretrain import check_parts_stage

    pt, _ = _pt(tmp_path, tiny_models("llama"))
    sft = tokenized("llama")
    check_dataset_stage("pt", read_manifest(pt), pt)
    check_dataset_stage("sft", read_manifest(sft), sft)
    with pytest.raises(UserError, match=r"instruction \(SFT\) rows; --stage pt trains on plain text"):
        check_dataset_stage("pt", read_manifest(sft), sft)
    with pytest.raises(UserError, match=r"pretraining rows \(tokenize --stage pt\); train them with --stage pt"):
        check_dataset_stage("sft", read_manifest(pt), pt)
    with pytest.raises(UserError, match="preference pairs; --stage pt"):
        check_dataset_stage("pt", {"rows": "preference"}, "prefs")
    with pytest.raises(UserError, match=f"{sft}: instruction"):
        check_parts_stage("pt", f"{pt},{sft}")
