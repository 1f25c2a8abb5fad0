"""``infer`` on tiny models: reference-less records, base vs adapter, several adapters, resuming,
stopping at the template's turn marker, sampling flags."""

import json

import pytest

from sample_data import ALPACA_ROWS
from instructglm.errors import UserError
from adapters import make_adapter, wire_chain
from instructglm.generation import Engine, SamplingConfig
from instructglm.infer.infer import InferConfig, infer


@pytest.fixture(scope="module")
def setup(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    model = tiny_models("llama")
    adapters = {name: make_adapter(model, root / name, seed) for name, seed in (("a", 1), ("b", 2))}
    rows = ALPACA_ROWS + [{"instruction": "今天天气很好。请把句子翻译成英文。"},  # no output at all
                          {"instruction": "What is the capital of France?", "input": "", "output": ""}]
    (root / "data.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return {"model": model, "adapters": adapters, "data": str(root / "data.json"), "root": root}


def read(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def run(setup, tmp_path, name="pred.jsonl", **kw):
    cfg = InferConfig(data=kw.pop("data", setup["data"]), output=str(tmp_path / name), model=setup["model"],
                      max_new_tokens=kw.pop("max_new_tokens", 6), batch_size=kw.pop("batch_size", 4), **kw)
    return infer(cfg), read(tmp_path / name)


def test_records_without_reference_and_compare_base(setup, tmp_path):
    result, rows = run(setup, tmp_path, adapter=setup["adapters"]["a"], compare_base=True)
    assert result["columns"] == ["prediction", "base_prediction"] and result["records"] == 6
    assert [r["reference"] for r in rows] == [r["output"] for r in ALPACA_ROWS] + [None, None]
    assert rows[4]["prompt"] == "### Instruction:\n今天天气很好。请把句子翻译成英文。\n\n### Response:\n"
    assert all(isinstance(r["prediction"], str) and isinstance(r["base_prediction"], str) for r in rows)
    assert rows[1]["category"] == "upper"
    # the base column is the plain model's answer; the adapter really changes the answers
    _, plain = run(setup, tmp_path, name="plain.jsonl")
    assert [r["base_prediction"] for r in rows] == [r["prediction"] for r in plain]
    assert any(r["prediction"] != r["base_prediction"] for r in rows)
    assert not (tmp_path / "pred.jsonl.partial").exists()


def test_conversation_ending_with_user_turn(setup, tmp_path):
    data = tmp_path / "conv.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"messages": [{"role": "user", "content": "你是谁？"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                      {"role": "user", "content": "again"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"conversations": [{"from": "human", "value": "你好"}]},
    ]) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="conv.jsonl:4"):  # one format per file, as in convert
        run(setup, tmp_path, data=str(data))
    data.write_text("\n".join(data.read_text(encoding="utf-8").splitlines()[:3]) + "\n", encoding="utf-8")
    _, rows = run(setup, tmp_path, data=str(data))
    assert [r["reference"] for r in rows] == [None, None, "a"]
    assert rows[1]["prompt"].endswith("### Instruction:\nagain\n\n### Response:\n")


def test_several_adapters_one_column_each(setup, tmp_path):
    from instructglm.cli import main

    a, b = setup["adapters"]["a"], setup["adapters"]["b"]
    out = tmp_path / "multi.jsonl"
    assert main(["-q", "infer", "--model", setup["model"], "--adapter", f"a={a}", "--adapter", f"b={b}",
                 "--data", setup["data"], "-o", str(out), "--max-new-tokens", "6", "--batch-size", "4",
                 "--compare-base"]) == 0
    rows = read(out)
    assert {"prediction_a", "prediction_b", "base_prediction"} <= set(rows[0]) and "prediction" not in rows[0]
    _, only_a = run(setup, tmp_path, name="a.jsonl", adapter=a)
    _, only_b = run(setup, tmp_path, name="b.jsonl", adapter=b)
    _, plain = run(setup, tmp_path, name="plain.jsonl")
    assert [r["prediction_a"] for r in rows] == [r["prediction"] for r in only_a]
    assert [r["prediction_b"] for r in rows] == [r["prediction"] for r in only_b]
    assert [r["base_prediction"] for r in rows] == [r["prediction"] for r in plain]
    assert [r["prediction_a"] for r in rows] != [r["prediction_b"] for r in rows]


def test_resume_generates_only_the_missing_rows(setup, tmp_path, monkeypatch):
    generated = []
    real = Engine.generate

    def counting(self, prompts, *args, **kwargs):
        generated.append(len(prompts))
        return real(self, prompts, *args, **kwargs)

    _, full = run(setup, tmp_path, name="full.jsonl", batch_size=2)

    def interrupted(self, prompts, *args, **kwargs):
        if len(generated) == 2:
            raise KeyboardInterrupt
        return counting(self, prompts, *args, **kwargs)

    monkeypatch.setattr(Engine, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(setup, tmp_path, batch_size=2)
    partial = tmp_path / "pred.jsonl.partial"
    lines = partial.read_text(encoding="utf-8").splitlines()
    assert not (tmp_path / "pred.jsonl").exists() and len(lines) == 1 + 4  # settings + 2 batches of 2
    partial.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20], encoding="utf-8")  # 2 rows + a torn line

    with pytest.raises(UserError, match="other settings"):
        run(setup, tmp_path, batch_size=2, max_new_tokens=7)
    generated.clear()
    monkeypatch.setattr(Engine, "generate", counting)
    result, rows = run(setup, tmp_path, batch_size=2)
    assert sum(generated) == 6 - 2 and result["resumed"] == 2
    assert rows == full and not partial.exists()


def test_stops_at_the_template_marker(tmp_path, tiny_models):
    """A model wired to answer "Paris. ### Instruction:Paris. ..." forever: generation stops once
    the marker is out, well before max_new_tokens, and the answer is the text before it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from instructglm.templates import get_template

    tok = AutoTokenizer.from_pretrained(tiny_models("llama"))
    model = AutoModelForCausalLM.from_pretrained(tiny_models("llama")).eval()
    chain = wire_chain(model, tok)
    lengths = []
    real = model.generate

    def recording(**kw):
        out = real(**kw)
        lengths.append(out.shape[1] - kw["input_ids"].shape[1])
        return out

    model.generate = recording
    engine, template = Engine(model, tok), get_template("alpaca")
    prompts = engine.prompts_ids(template, [[{"role": "user", "content": "What is the capital of France?"}],
                                            [{"role": "user", "content": "Capital?"}]])
    assert engine.generate(prompts, SamplingConfig(max_new_tokens=64), template.stop) == ["Paris.", "Paris."]
    assert lengths[0] <= len(chain) < 64


def test_sampling_flags(setup, tmp_path):
    from instructglm.cli import _flags, build_parser
    from instructglm.config import load_config

    args = build_parser().parse_args(["infer", "--data", "d", "-o", "o", "--temperature", "0.8", "--top-p", "0.9",
                                      "--top-k", "20", "--repetition-penalty", "1.3", "--max-new-tokens", "5"])
    cfg = load_config(InferConfig, flags=_flags(args, InferConfig))
    got = (cfg.temperature, cfg.top_p, cfg.top_k, cfg.repetition_penalty, cfg.max_new_tokens)
    assert got == (0.8, 0.9, 20, 1.3, 5)
    for bad in (["--top-p", "0"], ["--temperature", "-1"], ["--top-k", "-2"], ["--max-new-tokens", "0"]):
        with pytest.raises(UserError, match=bad[0]):
            load_config(InferConfig, flags=_flags(build_parser().parse_args(["infer", "--data", "d", "-o", "o",
                                                                             *bad]), InferConfig))
    opts = dict(temperature=0.8, top_p=0.9, top_k=20, repetition_penalty=1.3)
    _, one = run(setup, tmp_path, name="s1.jsonl", seed=3, **opts)
    _, two = run(setup, tmp_path, name="s2.jsonl", seed=3, **opts)
    _, greedy = run(setup, tmp_path, name="g.jsonl")
    assert [r["prediction"] for r in one] == [r["prediction"] for r in two]  # seeded
    assert [r["prediction"] for r in one] != [r["prediction"] for r in greedy]
