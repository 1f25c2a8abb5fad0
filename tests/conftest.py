import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent / "helpers"))

import pytest  # noqa: E402

from sample_data import tokenized_dataset  # noqa: E402
from tiny import make_model_dir, make_tokenizer  # noqa: E402



@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Never touch the user's model cache from tests."""
    os.environ["INSTRUCTGLM_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """``arch -> model directory`` of tiny random models, built once per session."""
    root = tmp_path_factory.mktemp("models")
    built = {}

    def get(arch: str = "llama") -> str:
        if arch not in built:
            built[arch] = str(make_model_dir(root / arch, arch))
        return built[arch]

    return get


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tokenized(tmp_path_factory, tiny_models):
    """``tokenized(arch="llama")``: ALPACA_ROWS x 3 converted and tokenized for a tiny model, built once
    per session. Read-only: a test that changes the dataset builds its own with ``tokenized_dataset``."""
    built = {}

    def get(arch: str = "llama"):
        if arch not in built:
            built[arch] = tokenized_dataset(tmp_path_factory.mktemp(f"tok-{arch}"), tiny_models(arch))
        return built[arch]

    return get

