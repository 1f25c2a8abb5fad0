"""The one owner of a tokenized dataset's ``manifest.json`` and ``stats.json``.

``manifest.json`` says what made the rows: layout version, template, tokenizer fingerprint (and,
for a local model, its tokenizer files' sizes and times), max length and length policy, the full
config and the source's sha256. ``train`` reads it (:func:`read_manifest`) to refuse rows made by
another tokenizer; ``tokenize`` reads it (:func:`is_up_to_date`) to skip work already done.
``stats.json`` holds the row counts and length percentiles that ``tokenize`` returns.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from instructglm.constants import MANIFEST, STATS
from instructglm.errors import UserError
from instructglm.files import read_json, write_json
from instructglm.templates import Template, get_template

if TYPE_CHECKING:
    from instructglm.tokenize.tokenize import TokenizeConfig

MANIFEST_FORMAT = "instructglm.tokenized/2"  # the layout of the dataset directory; bump when it changes

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "added_tokens.json")


def tokenizer_files(model_path: str) -> dict | None:
    """Size and mtime of the tokenizer files of a local model directory (None for a hub id)."""
    folder = Path(model_path)
    if not folder.is_dir():
        return None
    out = {}
    for name in _TOKENIZER_FILES:
        p = folder / name
        if p.is_file():
            st = p.stat()
            out[name] = [st.st_size, st.st_mtime_ns]
    return {"path": str(folder.resolve()), "files": out}


def row_settings(cfg: TokenizeConfig) -> dict:
    """The options that change the rows (other options only change how fast they are made)."""
    return {"max_seq_length": cfg.max_seq_length, "overlength": cfg.overlength,
            "train_on_prompt": cfg.train_on_prompt}


def build_manifest(cfg: TokenizeConfig, template: Template, tokenizer, tok_files: dict | None,
                   source_sha: str) -> dict:
    from instructglm.models.loading import tokenizer_fingerprint

    return {
        "format": MANIFEST_FORMAT,
        **template.manifest(),  # also checks a model template (chat template present)
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "tokenizer_files": tok_files,
        "model": cfg.model,
        "settings": row_settings(cfg),
        "config": asdict(cfg),
        "sources": [{"path": str(cfg.input), "sha256": source_sha}],
    }


def save(folder: Path, manifest: dict, stats: dict) -> None:
    """Write both files into the (not yet published) dataset directory ``folder``."""
    write_json(folder / STATS, stats)
    write_json(folder / MANIFEST, manifest)


def has_manifest(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def read_manifest(dataset_dir: str | Path) -> dict:
    if not has_manifest(Path(dataset_dir)):
        raise UserError(f"{dataset_dir}: not a tokenized dataset (no {MANIFEST}); run 'instructglm tokenize' first")
    return read_json(Path(dataset_dir) / MANIFEST)


def read_stats(dataset_dir: str | Path) -> dict:
    return read_json(Path(dataset_dir) / STATS)


def is_up_to_date(out: Path, cfg: TokenizeConfig, source_sha: str, template_name: str | None,
                  tok_files: dict | None, tokenizer) -> bool:
    """Whether ``out`` already holds the rows ``cfg`` would make from the source with that sha256.

    With a loaded ``tokenizer`` its fingerprint decides; without one (to answer before loading it)
    the local tokenizer files must be the same, untouched since.
    """
    try:
        manifest = read_json(out / MANIFEST)
    except (UserError, OSError):
        return False
    if not ((out / STATS).is_file() and (out / "state.json").is_file()):
        return False
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("settings") != row_settings(cfg):
        return False
    if [s.get("sha256") for s in manifest.get("sources", [])] != [source_sha]:
        return False
    if template_name is not None and manifest.get("template") != template_name:
        return False
    if tokenizer is not None:
        from instructglm.models.loading import tokenizer_fingerprint

        if manifest.get("tokenizer") != tokenizer_fingerprint(tokenizer):
            return False
        if cfg.template == "model":
            return manifest.get("template_sha256") == get_template("model", tokenizer).manifest()["template_sha256"]
        return True
    return tok_files is not None and manifest.get("tokenizer_files") == tok_files
