"""The Chinese-LLaMA-Alpaca workflow through the real CLI on a tiny LLaMA: tokenize and train with added
tokens (LoRA), infer with the adapter (its tokenizer is read from it), merge it, train a second LoRA on
the merged model, merge both in order onto the base, and refuse what cannot work."""

import json

import pytest
import torch

from instructglm.cli import main

ROWS = [{"instruction": "今天天气怎么样？", "input": "", "output": "今天天气很好。"},
        {"instruction": "把句子翻译成英文。", "input": "法国的首都是巴黎。", "output": "The capital of France is Paris."}]


@pytest.mark.slow
def test_add_tokens_train_infer_merge(tmp_path, tiny_models, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tiny_models("llama")
    (tmp_path / "a.json").write_text(json.dumps(ROWS * 4, ensure_ascii=False), encoding="utf-8")
    words = tmp_path / "words.txt"
    words.write_text("天气\n翻译\n首都\n巴黎\n", encoding="utf-8")
    p = {name: str(tmp_path / name) for name in ("a.jsonl", "tok", "run_a", "pred.jsonl", "with_a", "tok_b",
                                                  "run_b", "m", "run_p")}
    assert main(["convert", str(tmp_path / "a.json"), "-o", p["a.jsonl"]]) == 0
    assert main(["tokenize", p["a.jsonl"], "-o", p["tok"], "--model", base, "--add-tokens", str(words)]) == 0
    assert main(["train", "--dataset", p["tok"], "--model", base, "--add-tokens", str(words), "-o", p["run_a"],
                 "--max_steps", "3", "--learning_rate", "1e-2"]) == 0
    assert len(AutoTokenizer.from_pretrained(p["run_a"])) == 404
    assert "embed_tokens" in json.loads((tmp_path / "run_a" / "adapter_config.json").read_text())["modules_to_save"]
    assert main(["infer", "--adapter", p["run_a"], "--data_path", p["a.jsonl"], "-o", p["pred.jsonl"],
                 "--max-new-tokens", "4"]) == 0
    assert main(["merge", "--adapter", p["run_a"], "-o", p["with_a"]]) == 0
    assert main(["tokenize", p["a.jsonl"], "-o", p["tok_b"], "--model", p["with_a"]]) == 0
    assert main(["train", "--dataset", p["tok_b"], "--model", p["with_a"], "-o", p["run_b"], "--max_steps", "3",
                 "--learning_rate", "1e-2"]) == 0
    assert main(["merge", "--adapter", f"{p['run_a']},{p['run_b']}", "--model", base, "-o", p["m"]]) == 0
    merged = AutoModelForCausalLM.from_pretrained(p["m"], dtype=torch.float32)
    assert merged.config.vocab_size == len(AutoTokenizer.from_pretrained(p["m"])) == 404

    capsys.readouterr()
    assert main(["train", "--dataset", p["tok"], "--model", base, "--add-tokens", str(words), "-o", p["run_p"],
                 "--method", "ptuning", "--max_steps", "1"]) == 2
    assert "--add-tokens: a new vocabulary needs its embedding rows trained" in capsys.readouterr().err
