"""Vocabulary extension for training (the other half of Chinese-LLaMA): ``--tokenizer DIR`` (a tokenizer
that adds tokens to the base model's, e.g. one with merged Chinese pieces) and/or ``--add-tokens FILE``
(one token per line). ``tokenize`` encodes with the extended tokenizer; ``train`` resizes the input
embeddings and LM head to it (new rows = the mean of the old ones, tied matrices stay tied, see
:mod:`instructglm.models.vocab`) and trains them in full: under LoRA they become PEFT
``modules_to_save``, so the adapter carries the resized embedding and head, and the adapter directory
carries the tokenizer (:func:`save_tokenizer`).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from instructglm.errors import UserError
from instructglm.models.vocab import check_extension, load_tokenizer_dir, resize_vocab
from instructglm.models.vocab import save_tokenizer  # noqa: F401 - the adapter's tokenizer is saved by it

log = logging.getLogger(__name__)

VOCAB_ATTR = "_instructglm_vocab_modules"  # set on a resized model: the modules LoRA must save (lora/method.py)
METHODS = ("lora", "full")  # the methods that train the new rows


def read_token_file(path: str | Path) -> list[str]:
    """The tokens of an ``--add-tokens`` file: one per line, surrounding whitespace and blank lines
    ignored, repeats once."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--add-tokens {path}: file not found")
    tokens: list[str] = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise UserError(f"{path}:{number}: not UTF-8 text") from None
            if line and line not in tokens:
                tokens.append(line)
    if not tokens:
        raise UserError(f"--add-tokens {path}: no tokens in the file (one token per line)")
    return tokens


def extended_tokenizer(base, tokenizer_dir: str | None = None, add_tokens: str | None = None,
                       trust_remote_code: bool = False):
    """The tokenizer to tokenize and train with: ``base`` (the base model's, returned as it is when
    neither option is given), replaced by the one in ``tokenizer_dir`` (which must only add tokens to
    it), then with the tokens of the ``add_tokens`` file added (those it already has are skipped)."""
    if not tokenizer_dir and not add_tokens:
        return base
    tokenizer = base
    if tokenizer_dir:
        tokenizer = load_tokenizer_dir(tokenizer_dir, f"--tokenizer {tokenizer_dir}", trust_remote_code)
        check_extension(base, tokenizer, f"--tokenizer {tokenizer_dir}")
    if add_tokens:
        tokens = read_token_file(add_tokens)
        if tokenizer is base:
            tokenizer = copy.deepcopy(base)  # the base model's tokenizer object stays as it was
        vocab = tokenizer.get_vocab()
        new = [t for t in tokens if t not in vocab]
        tokenizer.add_tokens(new)
        log.info("--add-tokens %s: %d tokens added, %d already in the vocabulary", add_tokens, len(new),
                 len(tokens) - len(new))
    return tokenizer


def check_method(method: str, tokenizer_dir: str | None, add_tokens: str | None) -> None:
    """Only methods that train the embeddings can learn new tokens."""
    if (tokenizer_dir or add_tokens) and method not in METHODS:
        flag = "--tokenizer" if tokenizer_dir else "--add-tokens"
        raise UserError(f"{flag}: a new vocabulary needs its embedding rows trained, which method {method} does "
                        f"not do; use method {' or '.join(METHODS)}")


def _module_name(model, module) -> str | None:
    return next((name for name, m in model.named_modules() if m is module), None)


def vocab_modules(model) -> list[str]:
    """The names PEFT's ``modules_to_save`` needs to train the resized embeddings: the input embedding,
    and the LM head unless it is tied to it (PEFT's ``ensure_weight_tying`` then ties the trained copy)."""
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    names = [_module_name(model, embed)]
    if head is not None and head.weight is not embed.weight:
        names.append(_module_name(model, head))
    return [n.rsplit(".", 1)[-1] for n in names if n]


def extend_model(model, base_tokenizer, tokenizer) -> int:
    """Resize ``model`` (the base, before the method attaches) from ``base_tokenizer`` to ``tokenizer``
    and mark which modules must then train in full; returns the number of new tokens."""
    added = len(tokenizer) - len(base_tokenizer)
    if resize_vocab(model, len(base_tokenizer), len(tokenizer)):
        setattr(model, VOCAB_ATTR, vocab_modules(model))
    return max(added, 0)


def is_extended(base_tokenizer, tokenizer) -> bool:
    return tokenizer is not base_tokenizer and len(tokenizer) > len(base_tokenizer)
