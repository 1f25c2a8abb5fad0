"""Every input format `convert` reads: detection, exact conversion, metadata, skip/dedup and errors.

The fixtures in tests/data/formats/ are our own sentences written in each dataset's schema.
"""

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from instructglm.config import load_config
from instructglm.convert import sources as records
from instructglm.convert.convert import ConvertConfig, convert_files, rejects_path
from instructglm.convert.formats import DATASET_FORMATS, classify
from instructglm.convert.reading import convert_items, open_dataset
from instructglm.convert.turns import BELLE_LABELS, split_turns
from instructglm.convert.sources import read_records
from instructglm.errors import UserError

DATA = Path(__file__).parent.parent / "data" / "formats"

FIXTURE_FORMATS = {
    "alpaca.json": "alpaca",
    "belle_class.jsonl": "belle",
    "belle_target.jsonl": "belle",
    "belle_conversations.json": "belle",
    "belle_human_text.jsonl": "belle",
    "guanaco.jsonl": "guanaco",
    "firefly.jsonl": "firefly",
    "firefly_multiturn.jsonl": "firefly",
    "sharegpt.json": "sharegpt",
    "openai.jsonl": "canonical",
    "chatglm.json": "chatglm",
    "adgen.jsonl": "adgen",
    "seed_context.jsonl": "seed_context",
    "seed_text.jsonl": "seed_text",
}


def U(text, **extra):
    return {"role": "user", "content": text, **extra}


def A(text):
    return {"role": "assistant", "content": text}


def S(text):
    return {"role": "system", "content": text}


def _convert(tmp_path, *names, **kw):
    out = tmp_path / "out.jsonl"
    inputs = [str(n) if isinstance(n, Path) else str(DATA / n) for n in names]
    result = convert_files(ConvertConfig(inputs=inputs, output=str(out), **kw))
    recs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return result, recs


def _rejects(result):
    return [json.loads(line) for line in Path(result["rejects"]).read_text(encoding="utf-8").splitlines()]


def test_every_format_has_a_fixture():
    assert set(FIXTURE_FORMATS.values()) == set(DATASET_FORMATS)


@pytest.mark.parametrize("name,fmt", sorted(FIXTURE_FORMATS.items()))
def test_fixture_auto_detects_and_every_record_classifies(tmp_path, name, fmt, caplog):
    with caplog.at_level(logging.INFO, logger="instructglm.convert.reading"):
        result, recs = _convert(tmp_path, name)
    assert result["formats"] == {str(DATA / name): fmt}
    assert f"{name}: detected format '{fmt}'" in caplog.text
    assert [classify(r) for _, r in read_records(DATA / name)] == [fmt] * len(recs)
    assert result["records"] == len(recs) > 0 and result["rejected"] == 0


EXPECTED = [
    ("alpaca.json", 0, [U("把这句话翻译成英文\n\n今天的风很大。", instruction="把这句话翻译成英文", input="今天的风很大。"),
                        A("The wind is strong today.")]),
    ("alpaca.json", 1, [S("Answer in two words."), U("What will the weather be tomorrow?"), A("Light rain."),
                        U("And the day after?"), A("Calm again.")]),
    ("belle_class.jsonl", 1, [U("列出三种常见的水果"), A("苹果、香蕉、橙子。")]),
    ("belle_target.jsonl", 0, [U("用一句话介绍一下长城。"), A("长城是中国古代修建的一道很长的防御城墙。")]),
    ("belle_target.jsonl", 1, [U("你好"), A("你好！有什么可以帮你？"), U("推荐一本小说"), A("可以读一读《西游记》。")]),
    ("belle_conversations.json", 0, [U("我想学做饭，从哪里开始？"), A("可以先从炒鸡蛋这样简单的菜开始。"),
                                     U("需要准备什么？"), A("鸡蛋、油和一点盐就够了。")]),
    ("belle_human_text.jsonl", 0, [U("帮我想一个周末活动。"), A("去公园散步怎么样？"), U("下雨了呢？"),
                                   A("那就在家看一部电影吧。")]),
    ("belle_human_text.jsonl", 1, [U("写一句关于秋天的话。"), A("秋天的树叶像金色的信笺。")]),  # full-width colons
    ("guanaco.jsonl", 0, [S("Continue the conversation politely."), U("Can you help me plan a trip?"),
                          A("Of course. Where would you like to go?"), U("Somewhere by the sea."),
                          A("A quiet coastal town could be a good choice.")]),
    ("guanaco.jsonl", 1, [S("You are a patient math tutor."), U("What is 7 times 8?"), A("7 times 8 is 56.")]),
    ("firefly.jsonl", 0, [U("对联：春风吹绿江南岸"), A("细雨润红塞北花")]),
    ("firefly_multiturn.jsonl", 0, [U("给我的小猫起个名字。"), A("叫它“豆包”怎么样？"), U("再来一个英文名。"), A("Biscuit.")]),
    ("sharegpt.json", 0, [S("You can call tools."), U("What time is it in Beijing?"),
                          A('[function_call]\n{"name": "get_time", "arguments": {"city": "Beijing"}}'),
                          U('[observation]\n{"time": "08:30"}'), A("It is 08:30 in Beijing.")]),
    ("sharegpt.json", 1, [S("回答要简短。"), U("一年有几个季节？"), A("四个。")]),
    ("openai.jsonl", 0, [U("Is it raining in Hangzhou?"),
                         A('[function_call]\n[{"type": "function", "function": {"name": "weather", '
                           '"arguments": "{\\"city\\": \\"Hangzhou\\"}"}}]'),
                         U("[observation]\nlight rain"), A("Yes, there is light rain in Hangzhou.")]),
    ("openai.jsonl", 1, [S("你是一个助手。"), U("你好"), A("你好！")]),
    ("chatglm.json", 0, [U("说出彩虹的前两种颜色。"), A("红色和橙色。"), U("那第三个呢？"), A("第三个是绿色。")]),
    ("adgen.jsonl", 0, [U("类型#上衣*颜色#白色*风格#简约"), A("这件白色上衣设计简约，日常通勤都很合适。")]),
    ("seed_context.jsonl", 0, [U("Instruction: 把数字 12 写成中文大写\nAnswer: "), A("壹拾贰")]),
    ("seed_text.jsonl", 0, [U("总结下面的句子\n\n小明今天早上坐公交车去学校，路上遇到了老同学。", instruction="总结下面的句子",
                              input="小明今天早上坐公交车去学校，路上遇到了老同学。"), A("小明上学路上遇到老同学。")]),
    ("seed_text.jsonl", 1, [U("Write a one-line greeting for a birthday card."),
                            A("Wishing you a bright and happy year ahead!")]),
]


@pytest.mark.parametrize("name,index,messages", EXPECTED, ids=[f"{n}-{i}" for n, i, _ in EXPECTED])
def test_conversion_gives_exact_messages(tmp_path, name, index, messages):
    _, recs = _convert(tmp_path, name)
    assert recs[index]["messages"] == messages
    assert recs[index]["source"] == name and recs[index]["index"] == index


def test_metadata_is_kept(tmp_path):
    _, belle = _convert(tmp_path, "belle_class.jsonl")
    assert {k: belle[0][k] for k in ("class", "category", "id")} == {
        "class": "rewrite", "category": "rewrite", "id": "b-1"}
    _, firefly = _convert(tmp_path, "firefly.jsonl")
    assert [(r["kind"], r["category"]) for r in firefly] == [("Couplet", "Couplet"), ("Translation", "Translation")]
    _, multi = _convert(tmp_path, "firefly_multiturn.jsonl")  # an existing category is not overwritten
    assert (multi[0]["category"], multi[0]["conversation_id"], multi[0]["dataset"]) == ("Brainstorming", 12, "own")
    _, share = _convert(tmp_path, "sharegpt.json")
    assert share[0]["tools"] == '[{"name": "get_time"}]' and share[0]["id"] == "s-1"
    assert "conversations" not in share[0] and "system" not in share[0]
    _, openai = _convert(tmp_path, "openai.jsonl")
    assert openai[0]["topic"] == "weather"


def test_non_scalar_unconsumed_keys_are_dropped(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"instruction": "q", "output": "a", "tags": ["x"], "note": "n"}) + "\n")
    _, (rec,) = _convert(tmp_path, src)
    assert rec["note"] == "n" and "tags" not in rec


def test_several_files_and_glob_detect_per_file(tmp_path):
    for name in ("firefly.jsonl", "chatglm.json", "seed_text.jsonl"):
        shutil.copy(DATA / name, tmp_path / f"in_{name}")
    result, recs = _convert(tmp_path, tmp_path / "in_*")
    assert sorted(result["formats"].values()) == ["chatglm", "firefly", "seed_text"]
    assert result["records"] == 6 and sorted(result["files"].values()) == [2, 2, 2]


def test_forced_format(tmp_path):
    result, recs = _convert(tmp_path, "belle_human_text.jsonl", format="alpaca")  # no transcript splitting
    assert result["formats"] == {str(DATA / "belle_human_text.jsonl"): "alpaca"}
    assert recs[0]["messages"][0]["content"].startswith("Human: 帮我想一个周末活动。\nAssistant:")
    assert len(recs[0]["messages"]) == 2
    _, recs = _convert(tmp_path, "openai.jsonl", format="openai")  # alias of canonical
    assert len(recs) == 2
    with pytest.raises(UserError, match=r"alpaca\.json:2: missing field 'conversations'"):
        _convert(tmp_path, "alpaca.json", format="sharegpt")
    with pytest.raises(UserError, match="--format nope: unknown format"):
        load_config(ConvertConfig, flags={"inputs": ["x"], "output": "y", "format": "nope"})


@pytest.mark.parametrize("fmt,row,words", [
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]},
     "conversations[1].from must be one of"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": ["a"]}]},
     "conversations[1].value must be text, got list"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}]},
     "the last message must be the assistant's response"),
    ("sharegpt", {"conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "q"},
                                    {"from": "gpt", "value": "a"}]},
     "messages[0]: roles out of order (expected user, got assistant)"),
    ("belle", {"conversations": [{"from": "human", "value": "q"}, {"from": "assistant", "value": " "}]},
     "messages[1]: empty assistant response"),
    ("canonical", {"messages": [{"role": "user", "content": "q"}, {"role": "narrator", "content": "a"}]},
     "messages[1].role"),
    ("firefly", {"kind": "K", "input": "q", "target": ""}, "empty 'target'"),
    ("firefly", {"conversation": [{"human": "q"}]}, "conversation[0]: missing field 'assistant'"),
    ("chatglm", {"prompt": "q", "response": "a", "history": [["only"]]}, "history[0]"),
    ("adgen", {"content": {"k": "v"}, "summary": "s"}, "field 'content' must be text, got dict"),
    ("seed_context", {"context": "Instruction: q\nAnswer: ", "target": ["x"]}, "field 'target' must be text, got list"),
    ("seed_text", {"text": "### Instruction:\nq\n\n### Response:\nEND\n"}, "empty '### Response:' block"),
    ("seed_text", {"text": "### Instruction:\nq\n"}, "no '### Response:' block"),
    ("guanaco", {"instruction": "User: q\nAssistant: a\nSystem: late\nUser: q2\nAssistant:", "output": "a2"},
     "a 'System:' turn may only come before the first user turn"),
    ("belle", {"input": "Human: q\nHuman: again\nAssistant:", "target": "a"},
     "messages[1]: roles out of order (expected assistant, got user)"),
    ("alpaca", "just text", "expected a JSON object, got str"),
])
def test_malformed_record_names_file_and_line(tmp_path, fmt, row, words):
    src = tmp_path / "bad.jsonl"
    src.write_text("\n" + json.dumps(row) + "\n", encoding="utf-8")  # a blank first line: the record is on line 2
    if isinstance(row, dict):
        assert classify(row) == fmt  # auto-detection picks the same format
    with pytest.raises(UserError) as e:
        _convert(tmp_path, src, format=fmt)
    assert f"bad.jsonl:2: {words}" in str(e.value)
    assert not (tmp_path / "out.jsonl").exists()


BAD_LINES = [
    b'{"instruction": "Say hi", "output": "hi"}',             # 1 good
    b'{"instruction": "oops", "output": ',                     # 2 invalid JSON
    b'{"instruction": ["a list"], "output": "x"}',             # 3 wrong type
    b'{"instruction": "no answer"}',                           # 4 missing field
    b'',                                                       # 5 blank: ignored
    b'{"instruction": "q", "output": "   "}',                  # 6 empty response
    b'{"instruction": "\xe4\xb8", "output": "x"}',             # 7 not UTF-8
    b'{"instruction": "Say hi", "output": "hi"}',             # 8 duplicate of 1
    b'{"instruction": "\xe4\xbd\xa0\xe5\xa5\xbd", "output": "hello"}',  # 9 good
]


def test_skip_mode_writes_rejects_and_goes_on(tmp_path):
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(b"\n".join(BAD_LINES) + b"\n")
    result, recs = _convert(tmp_path, src, on_error="skip", dedup=True)
    assert (result["records"], result["converted"], result["rejected"], result["duplicates"]) == (2, 3, 5, 1)
    assert [r["index"] for r in recs] == [0, 7]  # original position in the file, bad lines counted
    assert result["rejects"] == str(tmp_path / "out.rejects.jsonl")
    rejects = _rejects(result)
    assert [(r["file"], r["line"]) for r in rejects] == [(str(src), n) for n in (2, 3, 4, 6, 7)]
    reasons = [r["reason"] for r in rejects]
    assert reasons[0].startswith("invalid JSON") and rejects[0]["record"] == '{"instruction": "oops", "output":'
    assert reasons[1:4] == ["field 'instruction' must be text, got list", "missing field 'output'", "empty 'output'"]
    assert reasons[4].startswith("not valid UTF-8") and "\ufffd" in rejects[4]["record"]
    assert rejects[2]["record"] == {"instruction": "no answer"}


def test_fail_mode_stops_at_first_bad_line(tmp_path):
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(b"\n".join(BAD_LINES) + b"\n")
    with pytest.raises(UserError, match=r"mixed\.jsonl:2: invalid JSON"):
        _convert(tmp_path, src)
    assert list(tmp_path.iterdir()) == [src]  # neither output nor rejects file


def test_skip_mode_broken_json_array_rejects_the_rest(tmp_path):
    src = tmp_path / "arr.json"
    src.write_text('[\n {"instruction": "one", "output": "1"},\n {"instruction": "two", "output": "2"},\n'
                   ' {"instruction": "three" "output": "3"},\n {"instruction": "four", "output": "4"}\n]\n',
                   encoding="utf-8")
    result, recs = _convert(tmp_path, src, on_error="skip")
    assert [r["messages"][1]["content"] for r in recs] == ["1", "2"]
    (rej,) = _rejects(result)
    assert rej["line"] == 4 and "invalid JSON in the record starting here" in rej["reason"]
    assert "rest of the JSON array (to line 6)" in rej["reason"] and '"four"' in rej["record"]


def test_skip_mode_bad_bytes_inside_json_array_record(tmp_path):
    src = tmp_path / "arr.json"
    src.write_bytes(b'\xef\xbb\xbf[\n {"instruction": "a", "output": "1"},\n'
                    b' {"instruction": "\xff",\n  "output": "2"},\n'
                    b' {"instruction": "c", "output": "3"}\n]')
    result, recs = _convert(tmp_path, src, on_error="skip")
    assert [r["messages"][1]["content"] for r in recs] == ["1", "3"]
    (rej,) = _rejects(result)
    assert rej["line"] == 3 and rej["reason"].startswith("not valid UTF-8")
    with pytest.raises(UserError, match=r"arr\.json:3: not valid UTF-8"):
        _convert(tmp_path, src)


def test_record_over_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "MAX_RECORD_BYTES", 200)
    src = tmp_path / "big.jsonl"
    src.write_text(json.dumps({"instruction": "q", "output": "x" * 300}) + "\n"
                   + json.dumps({"instruction": "q", "output": "small"}) + "\n")
    result, recs = _convert(tmp_path, src, on_error="skip")
    assert len(recs) == 1 and _rejects(result)[0]["reason"] == "record is larger than 200 bytes"
    with pytest.raises(UserError, match=r"big\.jsonl:1: record is larger than 200 bytes"):
        _convert(tmp_path, src)


def test_dedup_across_files(tmp_path):
    copy = tmp_path / "copy.json"
    shutil.copy(DATA / "alpaca.json", copy)
    result, recs = _convert(tmp_path, "alpaca.json", copy)
    assert (result["records"], result["duplicates"]) == (4, 0)
    result, recs = _convert(tmp_path, "alpaca.json", copy, dedup=True)
    assert (result["records"], result["converted"], result["duplicates"]) == (2, 4, 2)
    assert {r["source"] for r in recs} == {"alpaca.json"}  # the first occurrence is kept


def test_convert_items_can_hand_rejects_to_a_callback(tmp_path):
    src = tmp_path / "x.jsonl"
    src.write_text('{"prompt": "q", "response": "a"}\n{"prompt": "q"}\n', encoding="utf-8")
    seen = []
    fmt, items = open_dataset(src)
    recs = list(convert_items(src, fmt, items, on_reject=seen.append))
    assert len(recs) == 1 and [(r.line, r.reason) for r in seen] == [(2, "missing field 'response'")]


def test_seed_text_keeps_inner_headers_and_only_drops_an_end_line(tmp_path):
    src = tmp_path / "t.jsonl"
    rows = [{"text": "Be kind.\n\n### Instruction:\nTell a story\n\n### Response:\n### Part 1\nTHE END\n"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, (rec,) = _convert(tmp_path, src)
    assert rec["messages"] == [S("Be kind."), U("Tell a story"), A("### Part 1\nTHE END")]


def test_split_turns():
    assert split_turns("Human: a\nAssistant: b\nHuman：c\nAssistant:", BELLE_LABELS) == [
        ("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "")]
    assert split_turns("Tell me what Human: means", BELLE_LABELS) is None


def test_rejects_path():
    assert rejects_path("d/train.jsonl") == Path("d/train.rejects.jsonl")
    assert rejects_path("out") == Path("out.rejects.jsonl")


def test_cli_convert_skip_prints_counts_and_writes_rejects(tmp_path):
    shutil.copy(DATA / "firefly.jsonl", tmp_path / "firefly.jsonl")
    (tmp_path / "mixed.jsonl").write_bytes(b"\n".join(BAD_LINES) + b"\n")
    cmd = [sys.executable, "-m", "instructglm", "convert", "firefly.jsonl", "mixed.jsonl", "-o", "all.jsonl",
           "--on-error", "skip", "--dedup"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert ("wrote 4 records to all.jsonl (5 converted, 5 rejected, 1 duplicates removed; "
            "rejects in all.rejects.jsonl)") in proc.stdout
    assert "firefly.jsonl: detected format 'firefly'" in proc.stderr and "Traceback" not in proc.stderr
    assert len((tmp_path / "all.jsonl").read_text(encoding="utf-8").splitlines()) == 4
    rejects = [json.loads(x) for x in (tmp_path / "all.rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["file"], r["line"]) for r in rejects] == [("mixed.jsonl", n) for n in (2, 3, 4, 6, 7)]
    assert rejects[3]["reason"] == "empty 'output'"

    proc = subprocess.run(cmd[:-3], cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fail mode
    assert proc.returncode == 2 and "mixed.jsonl:2: invalid JSON" in proc.stderr and "Traceback" not in proc.stderr
