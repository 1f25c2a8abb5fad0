import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent / "helpers"))

import pytest  # noqa: E402

from tiny import make_model_dir, make_tokenizer  # noqa: E402

ARCHS = ["llama", "qwen2", "gemma3", "glm", "glm4"]


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


ALPACA_ROWS = [
    {"instruction": "Who are you?", "input": "", "output": "I am a tiny model."},
    {"instruction": "把下面的英文转换成大写字母", "input": "good morning", "output": "GOOD MORNING", "category": "upper"},
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris"},
    {"instruction": "你是谁？", "input": "", "output": "我是一个测试模型。"},
]
