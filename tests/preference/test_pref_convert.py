"""Preference layouts -> canonical preference records: detection, readers, FILE:LINE errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instructglm.convert import ConvertConfig
from instructglm.convert.pref_files import convert_preference_files, preference_inputs, read_preference_file
from instructglm.convert.preference import classify_preference
from instructglm.errors import UserError
from instructglm.record import Preference, RecordError, read_preferences

DATA = Path(__file__).parent.parent / "data" / "preference"

# file -> (layout, [(prompt's last user text, chosen, rejected or KTO label)])
EXPECTED = {
    "openai.jsonl": ("pref_openai", [("What is 2 + 3?", "5", "Let me think about it for a long while. It might be 6."),
                                     ("中国的首都是哪里？", "北京。", "The capital is Beijing.")]),
    "sharegpt.jsonl": ("pref_sharegpt", [("Say hello in French.", "Bonjour", "Hello"), ("一加一等于几？", "二。", "三。")]),
    "alpaca.json": ("pref_alpaca", [("把下面的词翻译成英文\n\n苹果", "apple", "banana"),
                                    ("Name a primary colour.", "Red", "Purple")]),
    "hh_rlhf.jsonl": ("hh_rlhf", [("How do I boil an egg?", "Put it in boiling water for eight minutes.", "I don't know."),
                                  ("讲个笑话", "为什么程序员喜欢黑暗？因为光会产生 bug。", "不要。")]),
    "ultrafeedback.jsonl": ("ultrafeedback", [("Write the number ten in digits.", "10", "ten"), ("用一个词形容大海", "辽阔", "小")]),
    "kto.jsonl": ("kto", [("What colour is the sky on a clear day?", "Blue.", True), ("天空是什么颜色的？", "绿色。", False)]),
    "pos_neg.jsonl": ("pos_neg", [("请用中文回答：猫会叫吗？", "会，猫会喵喵叫。", "Yes, cats meow."),
                                  ("Is water wet?", "Yes.", "水是湿的。")]),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_layout_is_detected_and_read(tmp_path, name):
    layout, rows = EXPECTED[name]
    out = tmp_path / "out.jsonl"
    result = convert_preference_files(ConvertConfig(inputs=[str(DATA / name)], output=str(out)), [DATA / name])
    assert result["formats"] == {str(DATA / name): layout} and result["records"] == len(rows)
    prefs = [p for _, p in read_preferences(out)]
    for pref, (question, chosen, second) in zip(prefs, rows):
        assert pref.prompt[-1].role == "user" and pref.prompt[-1].content == question
        assert pref.chosen.content == chosen
        if isinstance(second, bool):
            assert pref.label is second and pref.rejected is None
        else:
            assert pref.rejected.content == second and pref.is_pair


def test_shared_turns_become_the_prompt():
    hh = read_preference_file(DATA / "hh_rlhf.jsonl")[1]
    assert [m.role for m in hh.prompt] == ["user", "assistant", "user"]
    assert hh.prompt[1].content == "你好，有什么可以帮你？"
    sharegpt = read_preference_file(DATA / "sharegpt.jsonl")[1]
    assert sharegpt.prompt[0].role == "system" and len(sharegpt.prompt) == 4


def test_metadata_is_kept(tmp_path):
    out = tmp_path / "o.jsonl"
    convert_preference_files(ConvertConfig(inputs=[], output=str(out)), [DATA / "ultrafeedback.jsonl"])
    rec = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert rec["score_chosen"] == 9.0 and rec["source"] == "ultrafeedback.jsonl" and rec["index"] == 0
    assert "prompt" not in rec


def test_canonical_output_reads_back_as_the_same_layout(tmp_path):
    out = tmp_path / "o.jsonl"
    convert_preference_files(ConvertConfig(inputs=[], output=str(out)), [DATA / "hh_rlhf.jsonl", DATA / "kto.jsonl"])
    again = tmp_path / "again.jsonl"
    result = convert_preference_files(ConvertConfig(inputs=[], output=str(again)), [out])
    assert set(result["formats"].values()) <= {"pref_openai", "kto"}
    first = [p.to_json() for _, p in read_preferences(out)]
    second = [p.to_json() for _, p in read_preferences(again)]
    assert [{k: r[k] for k in r if k not in ("source", "index")} for r in first] == \
           [{k: r[k] for k in r if k not in ("source", "index")} for r in second]


def test_sft_files_are_not_preference_data_and_mixing_is_refused(tmp_path):
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n", encoding="utf-8")
    assert preference_inputs([sft]) is False
    assert preference_inputs([DATA / "kto.jsonl", DATA / "openai.jsonl"]) is True
    with pytest.raises(UserError, match="sft.jsonl: not preference data"):
        preference_inputs([DATA / "kto.jsonl", sft])


@pytest.mark.parametrize("record, reason", [
    ({"messages": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": ""}, "empty 'rejected'"),
    ({"messages": [{"role": "user", "content": "q"}], "chosen": {"role": "user", "content": "a"}, "rejected": "b"},
     "'chosen' must be the assistant's turn"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}, "'chosen' and 'rejected' differ before their last"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": "yes",
      "completion": "x"}, None),
    ({"instruction": "q", "output": ["only one"]}, None),
])
def test_bad_records_are_reported_with_file_and_line(tmp_path, record, reason):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n" + json.dumps(record) + "\n", encoding="utf-8")  # line 2
    fmt = classify_preference(record) or ("kto" if "label" in record else "pref_alpaca")
    with pytest.raises(UserError, match=r"bad\.jsonl:2: " + (reason or "")) as e:
        convert_preference_files(ConvertConfig(inputs=[], output=str(tmp_path / "o.jsonl"),
                                               format=fmt or "auto"), [path])
    assert "\n" not in str(e.value)
    assert not (tmp_path / "o.jsonl").exists()


def test_skip_writes_rejects(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "p", "pos_resp": "a", "neg_resp": "b"}) + "\n{oops\n"
                    + json.dumps({"prompt": "p", "pos_resp": "", "neg_resp": "b"}) + "\n", encoding="utf-8")
    result = convert_preference_files(ConvertConfig(inputs=[], output=str(tmp_path / "o.jsonl"), on_error="skip"),
                                      [path])
    assert result["records"] == 1 and result["rejected"] == 2
    reasons = [json.loads(x)["reason"] for x in (tmp_path / "o.rejects.jsonl").read_text().splitlines()]
    assert "invalid JSON" in reasons[0] and "empty 'pos_resp'" in reasons[1]


def test_forced_format_and_unknown_format(tmp_path):
    from instructglm.convert.formats import resolve_format

    assert resolve_format("hh_rlhf").name == "hh_rlhf" and resolve_format("zh_comparison").name == "pos_neg"
    with pytest.raises(UserError, match="preference data: kto"):
        resolve_format("nope")


def test_preference_record_round_trip_and_checks():
    rec = {"messages": [{"role": "user", "content": "q"}], "chosen": {"role": "assistant", "content": "a"},
           "rejected": {"role": "assistant", "content": "b"}, "source": "x"}
    assert Preference.from_json(rec).to_json() == rec
    with pytest.raises(RecordError, match="end with the user's turn"):
        Preference.from_json({**rec, "messages": [{"role": "user", "content": "q"},
                                                  {"role": "assistant", "content": "a"}]})
    with pytest.raises(RecordError, match="not a canonical preference record"):
        Preference.from_json({"messages": rec["messages"]})


# --------------------------------------------------------------------------- --map for preference layouts


def _mapped(tmp_path, name, items):
    out = tmp_path / "out.jsonl"
    cfg = ConvertConfig(inputs=[str(DATA / name)], output=str(out), map=items)
    return convert_preference_files(cfg, [DATA / name]), [p for _, p in read_preferences(out)], out


def test_map_reads_odd_pair_columns(tmp_path):
    result, prefs, out = _mapped(tmp_path, "mapped_pairs.jsonl",
                                 ["instruction=question", "input=ctx", "chosen=good", "rejected=bad"])
    assert result["formats"] == {str(DATA / "mapped_pairs.jsonl"): "mapped"} and result["records"] == 3
    assert [p.prompt[-1].content for p in prefs] == ["What is the capital of Italy?", "把下面的词翻译成英文\n\n月亮",
                                                     "Sort these numbers.\n\n3, 1, 2"]
    assert [(p.chosen.content, p.rejected.content) for p in prefs] == [
        ("Rome.", "Rome.\n\n### Answer:\nRome."), ("moon", "把下面的词翻译成英文"), ("1, 2, 3", "3, 2, 1")]
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["topic"] for r in records] == ["capital", "translate", "sort"]  # unmapped keys stay as metadata
    assert not {"good", "bad", "question", "ctx"} & set(records[0])


def test_map_reads_a_kto_label_and_a_turn_list(tmp_path):
    _, prefs, _ = _mapped(tmp_path, "mapped_kto.jsonl", ["instruction=query", "completion=reply", "label=thumbs_up"])
    assert [(p.prompt[-1].content, p.chosen.content, p.label) for p in prefs] == [
        ("一年有几个月？", "十二个月。", True), ("How many legs does a spider have?", "Six.", False)]
    assert all(p.rejected is None for p in prefs)
    _, (pref,), _ = _mapped(tmp_path, "mapped_turns.jsonl", ["messages=dialog", "role=speaker", "content=text",
                                                              "chosen=better", "rejected=worse"])
    assert [m.role for m in pref.prompt] == ["user", "assistant", "user"]
    assert (pref.chosen.content, pref.rejected.content) == ("是。", "Yes, water is wet.")


def test_a_missing_mapped_field_is_a_file_line_error(tmp_path):
    with pytest.raises(UserError, match=r"mapped_pairs\.jsonl:1: --map rejected=worse: the record has no key 'worse' "
                                        r"\(its keys: bad, ctx, good, question, topic\)"):
        _mapped(tmp_path, "mapped_pairs.jsonl", ["instruction=question", "chosen=good", "rejected=worse"])
    with pytest.raises(UserError, match=r"mapped_pairs\.jsonl:1: missing field 'rejected' \(or map it: "
                                        r"--map rejected=KEY\)"):
        _mapped(tmp_path, "mapped_pairs.jsonl", ["instruction=question", "chosen=good"])
    with pytest.raises(UserError, match=r"mapped_kto\.jsonl:1: 'reply' \(the KTO label\) must be true or false"):
        _mapped(tmp_path, "mapped_kto.jsonl", ["instruction=query", "completion=thumbs_up", "label=reply"])


def test_map_skips_bad_records_into_the_rejects_file(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"q": "Hi", "good": "Hello", "bad": "Go away"}) + "\n"
                    + json.dumps({"q": "Hi again", "good": "Hello again"}) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    cfg = ConvertConfig(inputs=[str(rows)], output=str(out), on_error="skip",
                        map=["instruction=q", "chosen=good", "rejected=bad"])
    result = convert_preference_files(cfg, [rows])
    assert (result["records"], result["rejected"]) == (1, 1)
    reject = json.loads(Path(result["rejects"]).read_text().splitlines()[0])
    assert reject["line"] == 2 and "--map rejected=bad" in reject["reason"]


@pytest.mark.parametrize("items, message", [
    (["chosen=good", "completion=reply"], "chosen (a chosen/rejected pair) and completion (a KTO completion"),
    (["output=answer", "chosen=good"], "--map output=answer with chosen: preference data has no single reply"),
    (["label=ok", "rejected=bad"], "rejected (a chosen/rejected pair) and label"),
])
def test_preference_maps_that_cannot_be_read_are_refused(items, message):
    from instructglm.convert.columns import ColumnMap

    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ColumnMap.parse(items)


def test_convert_cli_with_a_preference_map(tmp_path, capsys):
    from instructglm.cli import main

    out = tmp_path / "out.jsonl"
    code = main(["convert", str(DATA / "mapped_pairs.jsonl"), "-o", str(out), "--map", "instruction=question",
                 "--map", "input=ctx", "--map", "chosen=good", "--map", "rejected=bad"])
    assert code == 0 and [p.chosen.content for _, p in read_preferences(out)] == ["Rome.", "moon", "1, 2, 3"]
    code = main(["convert", str(DATA / "mapped_pairs.jsonl"), "-o", str(out), "--map", "instruction=question",
                 "--map", "chosen=good", "--map", "rejected=worse"])
    err = capsys.readouterr().err
    assert code == 2 and "mapped_pairs.jsonl:1: --map rejected=worse: the record has no key 'worse'" in err
