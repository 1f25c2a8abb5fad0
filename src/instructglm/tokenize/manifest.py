"""The one owner of a tokenized dataset's ``manifest.json`` and ``stats.json``.

``manifest.json`` says what made the rows: layout version, template, tokenizer fingerprint (and,
for a local model, its tokenizer files' sizes and times), max length and length policy, the full
config and the source's sha256. ``train`` reads it (:func:`read_manifest`) to refuse rows made by
another tokenizer; ``tokenize`` reads it (:func:`is_up_to_date`) to skip work already done.
``stats.json`` holds the row counts and length percentiles that ``tokenize`` returns.
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from instructglm.constants import MANIFEST, STATS
from instructglm.errors import UserError
from instructglm.files import read_json, write_json
from instructglm.templates import Template, get_template

if TYPE_CHECKING:
    from instructglm.tokenize.tokenize import TokenizeConfig

log = logging.getLogger(__name__)

CHECKSUMS = "checksums.json"  # size and CRC-32 of every other file, written last

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
    if cfg.stage == "pt":
        return {"stage": "pt", "max_seq_length": cfg.max_seq_length, "text_per_line": cfg.text_per_line}
    return {"max_seq_length": cfg.max_seq_length, "overlength": cfg.overlength,
            "train_on_prompt": cfg.train_on_prompt}


def build_manifest(cfg: TokenizeConfig, template: Template | None, tokenizer, tok_files: dict | None,
                   source_sha: str) -> dict:
    """The manifest; ``template`` is None for ``--stage pt`` (no template: ``"template": null``, which
    ``infer`` reads as "none trained", and ``"stage": "pt"``)."""
    from instructglm.models.loading import tokenizer_fingerprint

    return {
        "format": MANIFEST_FORMAT,
        **({"stage": "pt"} if cfg.stage == "pt" else {}),
        # also checks a model template (chat template present)
        **(template.manifest() if template is not None else {"template": None}),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "tokenizer_files": tok_files,
        "model": cfg.model,
        "settings": row_settings(cfg),
        "config": asdict(cfg),
        "sources": [{"path": str(cfg.input), "sha256": source_sha}],
    }


def save(folder: Path, manifest: dict, stats: dict) -> None:
    """Write both files into the (not yet published) dataset directory ``folder``, then the size
    and CRC-32 of every file in it (``checksums.json``), by which a damaged copy is recognised."""
    write_json(folder / STATS, stats)
    write_json(folder / MANIFEST, manifest)
    files = {p.name: [p.stat().st_size, _crc32(p)] for p in sorted(folder.iterdir())
             if p.is_file() and p.name != CHECKSUMS}
    write_json(folder / CHECKSUMS, {"algorithm": "crc32", "files": files})


def _crc32(path: Path) -> int:
    """CRC-32 of a file (zlib: about 3 GB/s, so checking a dataset costs a fraction of reading it)."""
    crc = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            crc = zlib.crc32(chunk, crc)
    return crc


def _json_file(folder: Path, name: str) -> tuple[object, str | None]:
    try:
        return json.loads((folder / name).read_bytes()), None
    except FileNotFoundError:
        return None, f"{name} is missing"
    except (ValueError, RecursionError, OSError):
        return None, f"{name} is not valid JSON"


def damage(folder: str | Path, full: bool = True) -> str | None:
    """Why the tokenized dataset ``folder`` is damaged, or ``None`` when it is whole.

    Its JSON files must parse and every data file ``state.json`` lists must exist; when
    ``checksums.json`` is there (``tokenize`` writes it), every file must have its recorded size and
    CRC-32 (with ``full``; the sizes only without), which also catches bytes changed in place.
    Datasets made otherwise (``save_to_disk``) get the first checks only.
    """
    folder = Path(folder)
    sums, problem = _json_file(folder, CHECKSUMS)
    if problem is None:
        listed = sums.get("files") if isinstance(sums, dict) else None
        if not isinstance(listed, dict):
            return f"{CHECKSUMS} is not valid"
        for name, expected in listed.items():
            p = folder / name
            if not p.is_file():
                return f"{name} is missing"
            if not (isinstance(expected, list) and len(expected) == 2):
                return f"{CHECKSUMS} is not valid"
            size = p.stat().st_size
            if size != expected[0]:
                return f"{name} has {size} bytes, {expected[0]} were written"
            if full and _crc32(p) != expected[1]:
                return f"{name} has changed since it was written (checksum differs)"
    for name in (MANIFEST, "dataset_info.json", "state.json"):
        value, problem = _json_file(folder, name)
        if problem:
            return problem
        if not isinstance(value, dict):
            return f"{name} is not valid"
    state, _ = _json_file(folder, "state.json")
    data_files = state.get("_data_files")
    if not isinstance(data_files, list) or not data_files:
        return "state.json lists no data files"
    for entry in data_files:
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not (folder / name).is_file():
            return f"{name or 'a data file'} (listed in state.json) is missing"
    return None


def check_whole(folder: str | Path, full: bool = True) -> None:
    """UserError naming ``folder`` and what is wrong if the tokenized dataset is damaged (see :func:`damage`)."""
    problem = damage(folder, full)
    if problem:
        raise UserError(f"{folder}: damaged tokenized dataset ({problem}); run 'instructglm tokenize' again")


def has_manifest(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def read_manifest(dataset_dir: str | Path) -> dict:
    """The manifest of a tokenized dataset, once its files are checked (the quick checks of
    :func:`check_whole`: ``train`` makes the full one, :func:`instructglm.train.data.check_dataset`)."""
    if not Path(dataset_dir).is_dir():
        raise UserError(f"{dataset_dir}: " + ("not a tokenized dataset directory" if Path(dataset_dir).exists()
                                              else "not found") + "; run 'instructglm tokenize' first")
    if not has_manifest(Path(dataset_dir)):
        raise UserError(f"{dataset_dir}: not a tokenized dataset (no {MANIFEST}); run 'instructglm tokenize' first")
    check_whole(dataset_dir, full=False)
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
    if not (out / CHECKSUMS).is_file():  # made before checksums were written: cannot tell it is whole
        return False
    problem = damage(out)
    if problem:
        log.warning("%s: damaged (%s); tokenizing again", out, problem)
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
        if cfg.template == "model" and cfg.stage != "pt":
            return manifest.get("template_sha256") == get_template("model", tokenizer).manifest()["template_sha256"]
        return True
    return tok_files is not None and manifest.get("tokenizer_files") == tok_files
