"""Vocabulary extension (issue 17, point 4): a tokenizer that only adds tokens, the resized embeddings
and LM head (new rows = mean of the old ones, tied ones stay tied), LoRA training them through
modules_to_save, the adapter carrying its tokenizer, loading it back, and merging two adapters in order
(the first extends the vocabulary, the second was trained on top of it) into a model with the larger
vocabulary whose logits equal base + adapters."""

import json

import pytest
import torch

from instructglm.cli import main
from instructglm.errors import UserError
from instructglm.models.loading import load_model, load_tokenizer, tokenizer_fingerprint
from instructglm.models.vocab import check_extension, extend_for_adapters
from instructglm.runinfo import RunInfo
from instructglm.train.methods import get_method
from instructglm.train.methods.lora.config import LoraOptions
from instructglm.train.vocab import (check_method, extend_model, extended_tokenizer, read_token_file,
                                     save_tokenizer)

NEW_TOKENS = ["天气", "翻译", "首都", "巴黎"]  # words of the merge probes and of TEXTS, absent from the tiny vocab
TEXTS = ["今天天气很好。请把句子翻译成英文。", "法国的首都是巴黎。", "Who are you? 天气 翻译"]


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "new_tokens.txt"
    path.write_text("\n".join(NEW_TOKENS[:2]) + "\n\n  " + NEW_TOKENS[2] + "  \n" + NEW_TOKENS[3] + "\n天气\n",
                    encoding="utf-8")
    return path


def batch(tokenizer):
    tokenizer.padding_side = "right"
    return tokenizer(TEXTS, return_tensors="pt", padding=True)


def logits(model, encoded):
    with torch.no_grad():
        return model(**encoded).logits.float()


def train_lora(base_dir: str, out, tokenizer=None, extend_from=None, steps: int = 4, seed: int = 0):
    """What train does with an extended vocabulary, in a small loop: resize, LoRA (+ modules_to_save),
    a few AdamW steps, save the adapter, its tokenizer and run info. Returns (model, tokenizer)."""
    torch.manual_seed(seed)
    base_tok = load_tokenizer(base_dir)
    tokenizer = tokenizer or base_tok
    fingerprint = tokenizer_fingerprint(tokenizer)  # as tokenize records it (before any padded batch)
    model = load_model(base_dir)
    extend_model(model, extend_from or base_tok, tokenizer)
    method = get_method("lora")
    peft = method.apply(model, LoraOptions(rank=4, alpha=8, dropout=0.0))
    optimizer = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=2e-2)
    encoded = batch(tokenizer)
    for _ in range(steps):
        peft(**encoded, labels=encoded["input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft.eval()
    state = {k: v.detach() for k, v in peft.named_parameters() if v.requires_grad}  # a tied matrix listed once
    method.save(peft, out, state)
    if tokenizer is not base_tok:
        save_tokenizer(tokenizer, out)
    RunInfo(base_model=base_dir, method="lora", template="alpaca", tokenizer=fingerprint,
            steps=steps).save(out)
    return peft, tokenizer


def test_token_file_and_extended_tokenizer(tiny_models, token_file):
    base = load_tokenizer(tiny_models("llama"))
    assert read_token_file(token_file) == NEW_TOKENS
    tok = extended_tokenizer(base, add_tokens=str(token_file))
    assert len(tok) == len(base) + len(NEW_TOKENS) and len(base) == 400  # the base tokenizer is not changed
    assert check_extension(base, tok, "x") == len(NEW_TOKENS)
    assert "天气" in tok.tokenize("今天天气很好") and "天气" not in base.tokenize("今天天气很好")
    assert extended_tokenizer(base) is base


def test_token_file_errors(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        read_token_file(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(UserError, match="no tokens"):
        read_token_file(tmp_path / "empty.txt")
    (tmp_path / "bad.txt").write_bytes("天气\n".encode() + b"\xff\xfe\n")
    with pytest.raises(UserError, match=r"bad.txt:2: not UTF-8"):
        read_token_file(tmp_path / "bad.txt")


def test_tokenizer_dir_must_only_add_tokens(tmp_path, tiny_models, token_file):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    base = load_tokenizer(tiny_models("llama"))
    good = extended_tokenizer(base, add_tokens=str(token_file))
    save_tokenizer(good, tmp_path / "good")
    loaded = extended_tokenizer(base, tokenizer_dir=str(tmp_path / "good"))
    assert loaded.get_vocab() == good.get_vocab()
    # Both options: the directory, then the file's tokens on top (here all there already).
    assert len(extended_tokenizer(base, str(tmp_path / "good"), str(token_file))) == len(good)

    other = Tokenizer(models.BPE())  # another tokenizer: same specials, other merges and ids
    other.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    other.train_from_iterator(["天气很好 another corpus entirely"] * 4, trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<bos>", "<eos>"], show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=other, bos_token="<bos>", eos_token="<eos>",
                            pad_token="<pad>").save_pretrained(tmp_path / "other")
    with pytest.raises(UserError) as e:
        extended_tokenizer(base, tokenizer_dir=str(tmp_path / "other"))
    message = str(e.value)
    assert message.startswith(f"--tokenizer {tmp_path / 'other'}: not an extension") and "\n" not in message
    with pytest.raises(UserError, match="holds no tokenizer"):
        extended_tokenizer(base, tokenizer_dir=str(tmp_path))


def test_only_methods_that_train_embeddings(token_file):
    check_method("lora", None, str(token_file))
    check_method("full", "dir", None)
    check_method("ptuning", None, None)
    for method in ("ptuning", "freeze"):
        with pytest.raises(UserError, match=f"--add-tokens: .*method {method}"):
            check_method(method, None, str(token_file))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # untied and tied embeddings
def test_resize_sets_new_rows_to_the_mean(arch, tiny_models, token_file):
    base_dir = tiny_models(arch)
    base_tok = load_tokenizer(base_dir)
    tok = extended_tokenizer(base_tok, add_tokens=str(token_file))
    model, plain = load_model(base_dir), load_model(base_dir)
    old = plain.get_input_embeddings().weight.shape[0]  # (qwen2's tokenizer loads one token more than it has rows)
    assert extend_model(model, base_tok, tok) == len(NEW_TOKENS)
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert embed.shape[0] == len(tok) == model.config.vocab_size
    for new, before in ((embed, plain.get_input_embeddings().weight), (head, plain.get_output_embeddings().weight)):
        torch.testing.assert_close(new[:old], before[:old])
        for row in range(old, len(tok)):
            torch.testing.assert_close(new[row], before[:old].mean(dim=0))
    assert (head is embed) == plain.config.tie_word_embeddings
    # The old tokens' logits are unchanged.
    ids = batch(base_tok)
    torch.testing.assert_close(logits(model, ids)[..., :old], logits(plain, ids)[..., :old], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_lora_trains_and_carries_the_resized_embeddings(arch, tmp_path, tiny_models, token_file):
    base_dir = tiny_models(arch)
    base_tok = load_tokenizer(base_dir)
    tok = extended_tokenizer(base_tok, add_tokens=str(token_file))
    trained, _ = train_lora(base_dir, tmp_path / "a", tok)
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert "embed_tokens" in config["modules_to_save"]
    rows = load_model(base_dir).get_input_embeddings().weight
    trained_rows = trained.get_input_embeddings().weight[len(base_tok):]
    mean_row = rows.mean(dim=0)
    assert (trained_rows - mean_row).abs().max() > 1e-3  # the new rows were trained
    expected = logits(trained, batch(tok))

    # What infer/serve do: the base resized to the adapter's tokenizer, then the adapter attached.
    model, carried = extend_for_adapters(load_model(base_dir), load_tokenizer(base_dir), [str(tmp_path / "a")])
    assert carried.get_vocab() == tok.get_vocab()
    assert tokenizer_fingerprint(carried) == RunInfo.load(tmp_path / "a").tokenizer  # what check_adapter_fits compares
    attached = get_method("lora").attach(model, tmp_path / "a").eval()
    torch.testing.assert_close(logits(attached, batch(carried)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_merge_two_adapters_in_order(arch, tmp_path, tiny_models, token_file, capsys):
    """Chinese-LLaMA then Alpaca: A extends the vocabulary; B was trained on base + A (merged)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = tiny_models(arch)
    base_tok = load_tokenizer(base_dir)
    tok = extended_tokenizer(base_tok, add_tokens=str(token_file))
    train_lora(base_dir, tmp_path / "a", tok)
    assert main(["merge", "--adapter", str(tmp_path / "a"), "-o", str(tmp_path / "with_a")]) == 0
    with_a = tmp_path / "with_a"
    assert len(AutoTokenizer.from_pretrained(with_a)) == len(tok)
    train_lora(str(with_a), tmp_path / "b", seed=1)
    capsys.readouterr()

    assert main(["merge", "--adapter", f"{tmp_path / 'a'},{tmp_path / 'b'}", "--model", base_dir,
                 "-o", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert out.index(f"{tmp_path / 'a'} (lora)") < out.index(f"{tmp_path / 'b'} (lora)")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    merged_tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert merged.config.vocab_size == len(merged_tok) == len(tok) == len(base_tok) + len(NEW_TOKENS)
    assert merged_tok.get_vocab() == tok.get_vocab()
    # Loaded twice (the second time through the tokenizer cache): one fingerprint, as tokenize and train compare
    assert tokenizer_fingerprint(load_tokenizer(str(tmp_path / "m"))) == tokenizer_fingerprint(
        load_tokenizer(str(tmp_path / "m"))) == tokenizer_fingerprint(merged_tok)
    assert merged.config.tie_word_embeddings == (arch == "qwen2")
    # base + A + B: B applied through PEFT on the model with A merged in
    only_a = AutoModelForCausalLM.from_pretrained(with_a, dtype=torch.float32).eval()
    encoded = batch(tok)
    assert any(i >= len(base_tok) for i in encoded["input_ids"].flatten().tolist())  # new tokens in the input
    a_logits = logits(only_a, encoded)
    expected = logits(PeftModel.from_pretrained(only_a, str(tmp_path / "b")).eval(), encoded)  # (injects B)
    got = logits(merged, encoded)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert (got - a_logits).abs().max() > 1e-2  # B was not dropped


def test_merge_refuses_a_tokenizer_that_is_not_an_extension(tmp_path, tiny_models, token_file, capsys):
    base_dir = tiny_models("llama")
    tok = extended_tokenizer(load_tokenizer(base_dir), add_tokens=str(token_file))
    train_lora(base_dir, tmp_path / "a", tok, steps=1)
    vocab_file = tmp_path / "a" / "tokenizer.json"
    data = json.loads(vocab_file.read_text(encoding="utf-8"))
    data["model"]["vocab"] = {k: {50: 51, 51: 50}.get(v, v) for k, v in data["model"]["vocab"].items()}  # 2 swapped
    vocab_file.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    capsys.readouterr()
    assert main(["merge", "--adapter", str(tmp_path / "a"), "-o", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'a'}: not an extension of the base model's tokenizer" in err[0]
    assert not (tmp_path / "m").exists()

    vocab_file.write_text("{not json", encoding="utf-8")  # a damaged tokenizer file: one line too
    assert main(["merge", "--adapter", str(tmp_path / "a"), "-o", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot load the tokenizer in" in err[0]
