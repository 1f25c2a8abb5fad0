"""Start-up: the tokenizer of a model directory loads through the plain fast class over its
``tokenizer.json`` once a first load has checked that this gives the very same tokenizer."""

import shutil

from instructglm.models import loading

TEXTS = ["Hello world, this is a test.", "### Instruction:\nname three rivers\n\n### Response:\n", "你好"]


def test_second_load_takes_the_checked_quick_path(tiny_models, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_models("llama"), model)
    first = loading.load_tokenizer(str(model))
    assert type(first).__name__ != "TokenizersBackend" or loading._plain_key(str(model)).is_file()
    key = loading._plain_key(str(model))
    assert key is not None and key.is_file()
    second = loading.load_tokenizer(str(model))
    assert type(second).__name__ == "TokenizersBackend"
    assert loading.tokenizer_fingerprint(second) == loading.tokenizer_fingerprint(first)
    for text in TEXTS:
        assert second(text)["input_ids"] == first(text)["input_ids"]
    assert (second.pad_token_id, second.eos_token_id, second.padding_side) == (
        first.pad_token_id, first.eos_token_id, first.padding_side)


def test_a_changed_tokenizer_file_or_a_mismatch_is_not_cached(tiny_models, tmp_path, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(tiny_models("llama"), model)
    loading.load_tokenizer(str(model))
    old_key = loading._plain_key(str(model))
    config = model / "tokenizer_config.json"
    config.write_text(config.read_text())  # touched: a new key, checked again on the next load
    assert loading._plain_key(str(model)) != old_key
    monkeypatch.setattr(loading, "_same_tokenizer", lambda a, b: False)  # a class that tokenizes differently
    tok = loading.load_tokenizer(str(model))
    assert not loading._plain_key(str(model)).is_file()
    assert type(tok).__name__ != "TokenizersBackend" or not loading._plain_key(str(model)).is_file()
