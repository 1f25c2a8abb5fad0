"""A tokenizer that loads only when something needs more than its ids.

``train`` on an already tokenized dataset asks its tokenizer for a handful of facts: the fingerprint
the dataset's manifest must match, the pad id, the vocabulary size. Building the tokenizer to answer
them costs seconds for a large vocabulary (Gemma 3's 262k: about 1 s to parse ``tokenizer.json`` and
0.4 s to serialise it again for the fingerprint). :func:`record_facts` writes those facts beside the
quick-path record of ``loading.py`` whenever the real tokenizer is loaded, keyed by the same hash of
the tokenizer files (path, sizes, modification times, transformers version), so a changed file is a
new key and never an old answer. :class:`DeferredTokenizer` answers from that record and loads the
real tokenizer the first time anything else is asked of it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from instructglm.files import write_json

log = logging.getLogger(__name__)

FACTS = ("fingerprint", "pad_token_id", "bos_token_id", "eos_token_id", "size")


def facts_path(plain_key: Path) -> Path:
    """The facts record that goes with a quick-path key of ``loading._plain_key``."""
    return plain_key.with_name(plain_key.name.replace(".json", ".facts.json"))


def record_facts(path: Path, tokenizer, fingerprint: Callable[[Any], str]) -> None:
    """Write the facts of ``tokenizer`` (as ``load_tokenizer`` returns it, pad token set) to ``path``;
    never an error (a cache)."""
    try:
        facts = {"fingerprint": fingerprint(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                 "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                 "size": len(tokenizer)}
        write_json(path, facts)
    except Exception as e:  # noqa: BLE001 - a cache that cannot be written only costs time
        log.debug("tokenizer facts not recorded in %s: %s", path, e)


def read_facts(path: Path) -> dict | None:
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return facts if isinstance(facts, dict) and all(k in facts for k in FACTS) else None


class DeferredTokenizer:
    """Stands in for a tokenizer: ``pad_token_id``, ``bos_token_id``, ``eos_token_id``, ``len()`` and
    :attr:`fingerprint` come from the recorded facts; any other attribute loads the real tokenizer
    (once, with ``load``) and is read from it. :meth:`real` returns that tokenizer, for code that
    needs the object itself (an ``isinstance`` check, ``save_pretrained``)."""

    def __init__(self, facts: dict, load: Callable[[], Any]):
        self._facts = facts
        self._load = load
        self._tokenizer = None

    @property
    def fingerprint(self) -> str:
        return self._facts["fingerprint"]

    @property
    def pad_token_id(self):
        return self._facts["pad_token_id"] if self._tokenizer is None else self._tokenizer.pad_token_id

    @property
    def bos_token_id(self):
        return self._facts["bos_token_id"] if self._tokenizer is None else self._tokenizer.bos_token_id

    @property
    def eos_token_id(self):
        return self._facts["eos_token_id"] if self._tokenizer is None else self._tokenizer.eos_token_id

    def __len__(self) -> int:
        return self._facts["size"] if self._tokenizer is None else len(self._tokenizer)

    def real(self):
        if self._tokenizer is None:
            self._tokenizer = self._load()
        return self._tokenizer

    def __getattr__(self, name: str):  # only called for what the class itself does not define
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.real(), name)

    def __call__(self, *args, **kwargs):
        return self.real()(*args, **kwargs)
