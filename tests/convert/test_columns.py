"""convert --map: column maps for layouts no format lists (BELLE's eval set, custom turn lists)."""

import json

import pytest

from instructglm.cli import main
from instructglm.convert.columns import ColumnMap, example_map
from instructglm.convert.convert import ConvertConfig, convert_files
from instructglm.errors import UserError

# The layout of BELLE's evaluation set (eval_set.json), rows written for this test.
BELLE_EVAL = [
    {"question": "把“今天天气很好”翻译成英文。", "std_answer": "The weather is nice today.", "class": "translation"},
    {"question": "一年有几个月？", "std_answer": "十二个月。", "class": "open qa"},
]
BELLE_MAP = ["instruction=question", "output=std_answer"]


def _write(tmp_path, rows, name="eval_set.jsonl"):
    src = tmp_path / name
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return src


def _convert(tmp_path, rows, **kw):
    src = _write(tmp_path, rows)
    out = tmp_path / "out.jsonl"
    result = convert_files(ConvertConfig(inputs=[str(src)], output=str(out), **kw))
    return result, [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_belle_eval_layout_converts_with_a_map_and_keeps_class_as_category(tmp_path):
    result, recs = _convert(tmp_path, BELLE_EVAL, map=BELLE_MAP)
    assert result["formats"] == {str(tmp_path / "eval_set.jsonl"): "mapped"} and result["records"] == 2
    assert recs[1]["messages"] == [{"role": "user", "content": "一年有几个月？"},
                                   {"role": "assistant", "content": "十二个月。"}]
    assert (recs[1]["class"], recs[1]["category"]) == ("open qa", "open qa")
    assert "question" not in recs[1] and "std_answer" not in recs[1]  # consumed, not metadata


def test_without_a_map_the_error_shows_the_keys_and_an_example_map(tmp_path):
    with pytest.raises(UserError) as e:
        _convert(tmp_path, BELLE_EVAL)
    message = str(e.value)
    assert "first record's keys: class, question, std_answer" in message
    assert "--map instruction=question --map output=std_answer" in message


def test_the_suggested_map_converts_the_file(tmp_path):
    suggestion = example_map(BELLE_EVAL[0]).split()
    _, recs = _convert(tmp_path, BELLE_EVAL, map=suggestion[1::2])
    assert recs[0]["messages"][0]["content"] == BELLE_EVAL[0]["question"]


def test_a_map_naming_a_missing_key_is_a_file_line_error(tmp_path):
    rows = [*BELLE_EVAL, {"question": "q", "answer": "a"}]
    with pytest.raises(UserError, match=r"eval_set\.jsonl:3: --map output=std_answer: the record has no key "
                                        r"'std_answer' \(its keys: answer, question\)"):
        _convert(tmp_path, rows, map=BELLE_MAP)
    with pytest.raises(UserError, match=r"eval_set\.jsonl:1: --map instruction=prompt: the record has no key"):
        _convert(tmp_path, BELLE_EVAL, map=["instruction=prompt", "output=std_answer"])


def test_empty_mapped_reply_names_the_files_key(tmp_path):
    with pytest.raises(UserError, match=r"eval_set\.jsonl:1: empty 'std_answer'"):
        _convert(tmp_path, [{"question": "q", "std_answer": " "}], map=BELLE_MAP)


def test_input_system_and_history_can_be_mapped(tmp_path):
    row = {"q": "And Germany?", "ctx": "Europe", "a": "Berlin", "sys": "Be brief.", "past": [["France?", "Paris"]]}
    _, (rec,) = _convert(tmp_path, [row], map=["instruction=q", "input=ctx", "output=a", "system=sys",
                                               "history=past"])
    assert [(m["role"], m["content"]) for m in rec["messages"]] == [
        ("system", "Be brief."), ("user", "France?"), ("assistant", "Paris"),
        ("user", "And Germany?\n\nEurope"), ("assistant", "Berlin")]
    assert not {"q", "ctx", "a", "sys", "past"} & set(rec)


def test_multi_turn_layout_with_role_and_content_keys(tmp_path):
    rows = [{"dialog": [{"speaker": "human", "text": "你好"}, {"speaker": "gpt", "text": "你好！"},
                        {"speaker": "user", "text": "再见"}, {"speaker": "assistant", "text": "再见！"}],
             "topic": "greeting"}]
    result, (rec,) = _convert(tmp_path, rows, map=["messages=dialog", "role=speaker", "content=text"])
    assert [m["role"] for m in rec["messages"]] == ["user", "assistant", "user", "assistant"]
    assert rec["messages"][3]["content"] == "再见！" and rec["topic"] == "greeting" and "dialog" not in rec
    bad = [{"dialog": [{"speaker": "human", "words": "hi"}]}]
    with pytest.raises(UserError, match=r"eval_set\.jsonl:1: dialog\[0\]: missing 'text'"):
        _convert(tmp_path, bad, map=["messages=dialog", "role=speaker", "content=text"])


def test_example_map_for_a_list_of_turns():
    rec = {"id": 1, "turns": [{"who": "human", "utterance": "hi"}]}
    assert example_map(rec) == "--map messages=turns --map role=who --map content=utterance"
    assert example_map({"n": 1}) is None


@pytest.mark.parametrize("items,words", [
    (["instruction"], "expected FIELD=KEY"),
    (["question=instruction"], "unknown field 'question'"),
    (["output=a", "output=b"], "'output' is already mapped to 'a'"),
    (["instruction=q", "messages=turns"], "belong to different layouts"),
])
def test_bad_maps_are_user_errors(items, words):
    with pytest.raises(UserError, match=words):
        ColumnMap.parse(items)


def test_map_excludes_a_forced_format(tmp_path):
    with pytest.raises(UserError, match="--map with --format alpaca"):
        _convert(tmp_path, BELLE_EVAL, map=BELLE_MAP, format="alpaca")


def test_map_through_the_cli(tmp_path, capsys):
    src = _write(tmp_path, BELLE_EVAL)
    out = tmp_path / "out.jsonl"
    assert main(["convert", str(src), "-o", str(out), "--map", "instruction=question",
                 "--map", "output=std_answer"]) == 0
    assert "wrote 2 records" in capsys.readouterr().out
    assert main(["convert", str(src), "-o", str(out), "--map", "instruction=question,output=nope"]) == 2
    assert "eval_set.jsonl:1: --map output=nope" in capsys.readouterr().err
