"""Start-up: the tokenizer of a model directory loads through the plain fast class over its
``tokenizer.json`` once a first load has checked that this gives the very same tokenizer."""

import json
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


def test_train_defers_the_tokenizer_once_its_facts_are_recorded(tiny_models, tmp_path, monkeypatch):
    """A first deferred load is the real tokenizer (and records its facts); later ones answer the
    fingerprint, special ids and size from the record without loading, and load on anything else."""
    from instructglm.models.deferred import DeferredTokenizer

    model = tmp_path / "model"
    shutil.copytree(tiny_models("llama"), model)
    real = loading.load_tokenizer_deferred(str(model))
    assert not isinstance(real, DeferredTokenizer)
    loads = []
    original = loading.load_tokenizer
    monkeypatch.setattr(loading, "load_tokenizer", lambda *a, **k: loads.append(a) or original(*a, **k))
    deferred = loading.load_tokenizer_deferred(str(model))
    assert isinstance(deferred, DeferredTokenizer)
    assert loading.tokenizer_fingerprint(deferred) == loading.tokenizer_fingerprint(real)
    assert (deferred.pad_token_id, deferred.eos_token_id, deferred.bos_token_id, len(deferred)) == (
        real.pad_token_id, real.eos_token_id, real.bos_token_id, len(real))
    assert loads == []  # nothing above needed the tokenizer itself
    assert deferred(TEXTS[0])["input_ids"] == real(TEXTS[0])["input_ids"]
    assert deferred.decode([1, 2]) == real.decode([1, 2]) and len(loads) == 1  # loaded once, on demand


def test_a_changed_tokenizer_file_is_not_answered_from_old_facts(tiny_models, tmp_path):
    from instructglm.models.deferred import DeferredTokenizer

    model = tmp_path / "model"
    shutil.copytree(tiny_models("llama"), model)
    loading.load_tokenizer_deferred(str(model))
    before = loading.load_tokenizer_deferred(str(model))
    assert isinstance(before, DeferredTokenizer)
    config = model / "tokenizer_config.json"
    settings = json.loads(config.read_text())
    settings["eos_token"] = "<bos>"  # another eos id (and fingerprint): the old facts must not answer
    config.write_text(json.dumps(settings))
    after = loading.load_tokenizer_deferred(str(model))
    assert not isinstance(after, DeferredTokenizer)
    assert after.eos_token_id != before.eos_token_id
    again = loading.load_tokenizer_deferred(str(model))
    assert isinstance(again, DeferredTokenizer) and again.eos_token_id == after.eos_token_id
    assert loading.tokenizer_fingerprint(again) == loading.tokenizer_fingerprint(after)
