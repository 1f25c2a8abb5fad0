import json

import datasets
import pytest

from sample_data import ALPACA_ROWS
from instructglm.convert.convert import ConvertConfig, convert_files
from instructglm.templates import Segment, get_template
from instructglm.constants import IGNORE_INDEX
from instructglm.tokenize import SegmentEncoder, TokenizeConfig, tokenize_file
from instructglm.tokenize.encode import apply_length_policy
from instructglm.errors import UserError


def test_alpaca_template_renders_the_alpaca_format():
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
    ids, labels = list(range(10)), [IGNORE_INDEX] * 6 + [6, 7, 8, 9]  # prompt 0..5, response 6..9 (9 = EOS)
    assert apply_length_policy(ids, labels, 10, "skip")[2] == "kept"
    assert apply_length_policy(ids, labels, 8, "skip") == (None, None, "skipped")
    assert apply_length_policy(ids, labels, 8, "fail")[2] == "overlong"
    # the prompt loses its middle: its start (BOS) and its response opening (keep_tail) stay
    got_ids, got_labels, action = apply_length_policy(ids, labels, 8, "truncate", keep_tail=2)
    assert action == "truncated_prompt" and got_ids == [0, 1, 4, 5, 6, 7, 8, 9]
    assert got_labels == [IGNORE_INDEX] * 4 + [6, 7, 8, 9]
    # the response alone is too long: it is cut, but keeps its closing EOS and half the room goes to the prompt
    got_ids, got_labels, action = apply_length_policy(ids, labels, 5, "truncate", keep_tail=1)
    assert action == "truncated_response" and got_ids == [0, 5, 6, 7, 9] and got_labels[-3:] == [6, 7, 9]
    long_resp = [IGNORE_INDEX] * 3 + list(range(3, 40))
    got_ids, got_labels, action = apply_length_policy(list(range(40)), long_resp, 8, "truncate")
    assert action == "truncated_response" and len(got_ids) == 8 and got_ids[-1] == 39
    assert got_ids[:3] == [0, 1, 2] and got_labels[-5:] == [3, 4, 5, 6, 39]
    # a closing of several tokens (end-of-turn text) is kept whole
    got_ids, _, _ = apply_length_policy(list(range(40)), long_resp, 8, "truncate", closing=2)
    assert got_ids[-2:] == [38, 39]


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


def _rows(path):
    ds = datasets.load_from_disk(str(path))
    return list(ds["input_ids"]), list(ds["labels"])


def test_train_on_prompt_trains_every_token(tmp_path, canonical, tiny_models):
    stats = tokenize_file(TokenizeConfig(input=str(canonical), output=str(tmp_path / "t"), model=tiny_models("llama"),
                                         train_on_prompt=True))
    ids, labels = _rows(tmp_path / "t")
    assert labels == ids and stats["trained_tokens"] == sum(map(len, ids))
    assert json.loads((tmp_path / "t" / "manifest.json").read_text())["settings"]["train_on_prompt"] is True


def _long_file(tmp_path, n=6, long_at=(3,), resp_words=3, prompt_words=60):
    rows = []
    for i in range(n):
        words = prompt_words if i in long_at else 2
        rows.append({"messages": [{"role": "user", "content": " ".join(["fox jumps"] * words) + f" {i}?"},
                                  {"role": "assistant", "content": " ".join(["Paris"] * resp_words)}]})
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_overlength_fail_names_file_and_line(tmp_path, tiny_models):
    path = _long_file(tmp_path, long_at=(3, 5))
    with pytest.raises(UserError, match=r"long\.jsonl:4: .*longer than max_seq_length=60"):
        tokenize_file(TokenizeConfig(input=str(path), output=str(tmp_path / "t"), model=tiny_models("llama"),
                                     max_seq_length=60, overlength="fail"))
    assert not (tmp_path / "t").exists()


def test_overlength_truncate_keeps_response_and_eos(tmp_path, tiny_models, tokenizer):
    model = tiny_models("llama")
    path = _long_file(tmp_path, long_at=(3,))
    stats = tokenize_file(TokenizeConfig(input=str(path), output=str(tmp_path / "t"), model=model,
                                         max_seq_length=60, overlength="truncate"))
    assert stats["rows_out"] == 6 and stats["rows_truncated_prompt"] == 1 and stats["rows_truncated_response"] == 0
    assert stats["length_before"]["max"] > 60 >= stats["length_after"]["max"]
    ids, labels = _rows(tmp_path / "t")
    row, lab = ids[3], labels[3]
    assert len(row) == 60 and row[0] == tokenizer.bos_token_id and row[-1] == tokenizer.eos_token_id
    assert tokenizer.decode([x for x in lab if x != IGNORE_INDEX]) == "Paris Paris Paris" + tokenizer.eos_token
    assert tokenizer.decode(row).endswith("### Response:\nParis Paris Paris" + tokenizer.eos_token)
    # a response longer than the limit: cut, EOS kept, still trained
    path = _long_file(tmp_path, long_at=(), resp_words=80)
    stats = tokenize_file(TokenizeConfig(input=str(path), output=str(tmp_path / "t2"), model=model,
                                         max_seq_length=30, overlength="truncate"))
    assert stats["rows_truncated_response"] == 6 and stats["rows_truncated_prompt"] == 0
    for row, lab in zip(*_rows(tmp_path / "t2")):
        assert len(row) == 30 and row[-1] == lab[-1] == tokenizer.eos_token_id
        assert tokenizer.decode([x for x in lab if x != IGNORE_INDEX]).startswith("Paris Paris")


def test_skip_overlength_alias_and_cli_show(tmp_path, canonical, tiny_models, capsys):
    from instructglm.cli import main

    out = tmp_path / "t"
    code = main(["tokenize", str(canonical), "--save_path", str(out), "--model", tiny_models("llama"),
                 "--skip_overlength", "--max_seq_length", "64", "--show", "2"])
    printed = capsys.readouterr().out
    assert code == 0
    assert printed.count("--- example") == 2 and "[[I am a tiny model.<eos>]]" in printed
    body = printed.split("---\n", 1)[1]
    assert "### Instruction:\nWho are you?" in body.split("[[")[0]
    assert json.loads((out / "manifest.json").read_text())["settings"]["overlength"] == "skip"


def test_second_run_reuses_the_output(tmp_path, canonical, tiny_models, capsys):
    from instructglm.cli import main

    out = tmp_path / "t"
    argv = ["tokenize", str(canonical), "-o", str(out), "--model", tiny_models("llama")]
    assert main(argv) == 0
    first = (out / "manifest.json").stat()
    capsys.readouterr()
    assert main(argv) == 0
    assert "up to date" in capsys.readouterr().out
    again = (out / "manifest.json").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    # another option or --force redoes it
    assert main(argv + ["--max-seq-length", "100"]) == 0
    assert "up to date" not in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["settings"]["max_seq_length"] == 100
    assert main(argv + ["--max-seq-length", "100", "--force"]) == 0
    assert "up to date" not in capsys.readouterr().out


def test_num_proc_2_gives_the_same_rows(tmp_path, tiny_models):
    rows = []
    for i in range(300):
        rows.append({"messages": [{"role": "user", "content": f"第{i}个问题 what is {i}+{i}?"},
                                  {"role": "assistant", "content": f"{2 * i} 是答案"}]})
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    model = tiny_models("llama")
    one = tokenize_file(TokenizeConfig(input=str(path), output=str(tmp_path / "p1"), model=model, num_proc=1,
                                       batch_size=64))
    two = tokenize_file(TokenizeConfig(input=str(path), output=str(tmp_path / "p2"), model=model, num_proc=2,
                                       batch_size=64))
    assert one["num_proc"] == 1 and two["num_proc"] == 2
    assert _rows(tmp_path / "p1") == _rows(tmp_path / "p2") and len(_rows(tmp_path / "p1")[0]) == 300
    assert one["length_after"] == two["length_after"]
    # a record error in the second range is reported with its line in the whole file
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[250] = '{"messages": [{"role": "user", "content": "x"}]}\n'
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(UserError, match=r"many\.jsonl:251: the last message"):
        tokenize_file(TokenizeConfig(input=str(path), output=str(tmp_path / "p3"), model=model, num_proc=2))


def test_manifest_is_read_back_and_a_plain_directory_is_refused(tmp_path, tokenized):
    from instructglm.tokenize import read_manifest
    from instructglm.tokenize.manifest import MANIFEST_FORMAT, read_stats

    dataset = tokenized()
    manifest = read_manifest(dataset)
    assert manifest["format"] == MANIFEST_FORMAT and manifest["template"] == "alpaca"
    assert manifest["settings"] == {"max_seq_length": 512, "overlength": "skip", "train_on_prompt": False}
    assert read_stats(dataset)["rows_out"] == len(datasets.load_from_disk(str(dataset)))
    with pytest.raises(UserError, match=r"not a tokenized dataset \(no manifest\.json\)"):
        read_manifest(tmp_path)
