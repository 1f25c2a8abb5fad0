"""Extended vocabularies (Chinese-LLaMA's added Chinese tokens): the check that a tokenizer only adds
tokens to another, the resize of a model's embeddings to it, and the tokenizer an adapter carries.

Used on both sides: ``train`` resizes the base before attaching its method
(:mod:`instructglm.train.vocab`), and whatever loads a trained result (``infer``, ``chat``,
``serve``, ``merge``) resizes the base the same way before attaching it, using the tokenizer saved in
the adapter directory. The resize is deterministic (each new row is the mean of the base's rows), so
both sides build the same model even for rows the adapter does not carry.
"""

from __future__ import annotations

import logging
from pathlib import Path

from instructglm.errors import UserError

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")  # any one: a tokenizer is here


def has_tokenizer(directory: str | Path) -> bool:
    return any((Path(directory) / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer_dir(directory: str | Path, label: str, trust_remote_code: bool = False):
    """The tokenizer in ``directory`` (no model needed beside it), with a pad token as
    :func:`~instructglm.models.loading.load_tokenizer` gives one; ``label`` names it in errors."""
    from transformers import AutoTokenizer

    if not Path(directory).is_dir():
        raise UserError(f"{label}: directory {directory} not found")
    if not has_tokenizer(directory):
        raise UserError(f"{label}: {directory} holds no tokenizer ({', '.join(TOKENIZER_FILES)})")
    try:
        tok = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - a damaged tokenizer.json raises the tokenizers library's bare Exception
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{label}: cannot load the tokenizer in {directory}: {first}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def save_tokenizer(tokenizer, directory: str | Path) -> None:
    """``tokenizer`` into ``directory`` without the padding and truncation a batch call left in its fast
    backend: written into ``tokenizer.json`` they would change the fingerprint of the tokenizer loaded
    from it (``tokenize`` and ``train`` compare fingerprints)."""
    import copy

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and (backend.padding is not None or backend.truncation is not None):
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.backend_tokenizer.no_padding()
        tokenizer.backend_tokenizer.no_truncation()
    tokenizer.save_pretrained(str(directory))


def check_extension(old, new, label: str) -> int:
    """How many tokens ``new`` adds to ``old``; a one-line UserError when it changes or removes any of
    ``old``'s tokens or special tokens (their ids would then mean other text to the trained weights)."""
    old_vocab, new_vocab = old.get_vocab(), new.get_vocab()
    for token, i in sorted(old_vocab.items(), key=lambda item: item[1]):
        if new_vocab.get(token) != i:
            now = "missing" if token not in new_vocab else f"id {new_vocab[token]}"
            raise UserError(f"{label}: not an extension of the base model's tokenizer: token {token!r} is id {i} "
                            f"there and {now} here; only a tokenizer that adds tokens (after the existing ids) "
                            f"can be used")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        if getattr(old, name, None) != getattr(new, name, None):
            raise UserError(f"{label}: not an extension of the base model's tokenizer: {name} is "
                            f"{getattr(old, name, None)} there and {getattr(new, name, None)} here")
    added = len(new) - len(old)
    if added < 0 or set(new_vocab.values()) != set(range(len(new))):
        raise UserError(f"{label}: not an extension of the base model's tokenizer: its {len(new)} token ids are "
                        f"not 0..{len(new) - 1} (the base has {len(old)})")
    return added


def _mean_rows(weight, old: int, new: int) -> None:
    """Rows ``old..new-1`` of ``weight`` (its new tokens) set to the mean of rows ``0..old-1``."""
    import torch

    with torch.no_grad():
        weight[old:new] = weight[:old].float().mean(dim=0).to(weight.dtype)


def resize_vocab(model, old_tokens: int, new_tokens: int) -> bool:
    """Make room for token ids up to ``new_tokens`` - 1 in the input embeddings and the LM head (tied ones
    stay tied) and set the rows of the new ids ``old_tokens..new_tokens-1`` to the mean of the existing
    token rows. A model with spare rows already (padded vocabularies) keeps its size. Returns whether
    there are new ids."""
    if new_tokens <= old_tokens:
        return False
    rows = model.get_input_embeddings().weight.shape[0]
    if new_tokens > rows:  # transformers resizes both matrices and re-ties; the new rows are set below
        model.resize_token_embeddings(new_tokens, mean_resizing=False)
    old_rows = min(old_tokens, rows)
    _mean_rows(model.get_input_embeddings().weight, old_rows, new_tokens)
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        _mean_rows(head.weight, old_rows, new_tokens)
    log.info("vocabulary extended: %d -> %d tokens (embedding rows %d -> %d; new rows = mean of the old ones)",
             old_tokens, new_tokens, rows, model.get_input_embeddings().weight.shape[0])
    return True


def adapter_tokenizer(adapter_dir: str | Path):
    """The tokenizer a trained result carries (an extended vocabulary), or None when it has none."""
    if not has_tokenizer(adapter_dir):
        return None
    return load_tokenizer_dir(adapter_dir, f"--adapter {adapter_dir}")


def extend_for_adapters(model, tokenizer, adapter_dirs: list[str | Path]):
    """Before attaching trained results side by side (``infer``, ``chat``, ``serve``): the tokenizer
    to use and ``model`` resized to it, as training resized it. An adapter that carries a tokenizer
    (an extended vocabulary) decides; several must carry the same one. Returns ``(model, tokenizer)``,
    both unchanged when no adapter carries a tokenizer."""
    carried = [(d, t) for d, t in ((d, adapter_tokenizer(d)) for d in adapter_dirs) if t is not None]
    if not carried:
        return model, tokenizer
    first_dir, first = carried[0]
    for directory, other in carried[1:]:
        if other.get_vocab() != first.get_vocab():
            raise UserError(f"--adapter {directory}: its vocabulary differs from that of {first_dir}; adapters "
                            f"loaded together must share one tokenizer")
    check_extension(tokenizer, first, f"--adapter {first_dir}")
    resize_vocab(model, len(tokenizer), len(first))
    return model, first
