"""``infer --map``: the column maps of ``convert --map`` read a layout no format lists, such as BELLE's own
evaluation set ({"question", "std_answer", "class"}, written here by us)."""

import json

import pytest

from instructglm.cli import main
from instructglm.errors import UserError
from instructglm.infer.infer import InferConfig, infer

BELLE_EVAL = [
    {"question": "把下面的英文转换成大写字母：good morning", "std_answer": "GOOD MORNING", "class": "rewrite"},
    {"question": "What is the capital of France?", "std_answer": "Paris", "class": "open qa"},
    {"question": "你是谁？", "class": "chat"},  # no reference: still a prompt to answer
]
MAP = ["--map", "instruction=question", "--map", "output=std_answer"]


@pytest.fixture()
def belle_eval(tmp_path):
    path = tmp_path / "eval_set.json"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in BELLE_EVAL) + "\n", encoding="utf-8")
    return path


def test_belle_eval_layout_through_the_cli(tmp_path, tiny_models, belle_eval, capsys):
    out = tmp_path / "pred.jsonl"
    argv = ["infer", "--data", str(belle_eval), "--model", tiny_models("llama"), "-o", str(out),
            "--max-new-tokens", "4", "--template", "alpaca", *MAP]
    assert main(argv) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["reference"] for r in rows] == ["GOOD MORNING", "Paris", None]
    assert [r["category"] for r in rows] == ["rewrite", "open qa", "chat"]  # BELLE's class, as convert keeps it
    assert rows[0]["prompt"] == "### Instruction:\n把下面的英文转换成大写字母：good morning\n\n### Response:\n"
    assert all(isinstance(r["prediction"], str) for r in rows)
    assert not any("question" in r or "std_answer" in r for r in rows)  # consumed by the map, not metadata


def test_without_a_map_the_error_shows_the_keys_and_a_map_line(tmp_path, tiny_models, belle_eval):
    cfg = InferConfig(data=str(belle_eval), output=str(tmp_path / "p.jsonl"), model=tiny_models("llama"))
    with pytest.raises(UserError, match=r"keys: class, question, std_answer.*--map instruction=question "
                                        r"--map output=std_answer"):
        infer(cfg)


def test_a_map_naming_a_missing_key_is_a_file_line_error(tmp_path, tiny_models, belle_eval):
    cfg = InferConfig(data=str(belle_eval), output=str(tmp_path / "p.jsonl"), model=tiny_models("llama"),
                      map=["instruction=prompt", "output=std_answer"])
    with pytest.raises(UserError, match=r"eval_set.json:1: --map instruction=prompt: the record has no key 'prompt'"):
        infer(cfg)
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize("items, fmt, message", [
    (["instruction"], "auto", "--map instruction: expected FIELD=KEY"),
    (["question=q"], "auto", "unknown field 'question'"),
    (["instruction=question"], "alpaca", "--map with --format alpaca"),
])
def test_bad_map_flags_are_refused_before_loading(items, fmt, message):
    with pytest.raises(UserError, match=message):
        InferConfig(data="x.json", output="p.jsonl", map=items, format=fmt).validate()
