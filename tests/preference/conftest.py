"""The preference tests' fixture: our pairs tokenized once per session for a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from pref_data import TRAIN_PAIRS, tokenize_pairs, write_pairs


@pytest.fixture(scope="session")
def pair_dataset(tmp_path_factory, tiny_models):
    """``pair_dataset(arch="llama")``: TRAIN_PAIRS tokenized for a tiny model (read-only)."""
    built = {}

    def get(arch: str = "llama") -> Path:
        if arch not in built:
            root = tmp_path_factory.mktemp(f"pairs-{arch}")
            built[arch] = tokenize_pairs(root, tiny_models(arch), write_pairs(root / "pairs.jsonl", TRAIN_PAIRS))
        return built[arch]

    return get
