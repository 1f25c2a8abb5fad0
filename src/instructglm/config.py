"""Dataclass configs that load from YAML, flags and ``key=value`` overrides.

Every stage's options are one dataclass; each field carries its help text in ``metadata``
(see :func:`opt`). The same dataclass drives three things:

* ``add_arguments`` turns the fields into ``--kebab-case`` flags (plus any legacy aliases),
* ``load_config`` merges a YAML file, ``key=value`` overrides and flags, in that order,
  checking every key and type and naming the offending key in the error,
* ``to_yaml`` writes the fully resolved config next to the results.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from instructglm.errors import UserError

_MISSING = dataclasses.MISSING


def opt(default: Any = _MISSING, help: str = "", aliases: tuple[str, ...] = (), **kw: Any) -> Any:
    """A dataclass field with help text and optional extra flag names (e.g. the seeds' ``--lora_rank``)."""
    metadata = {"help": help, "aliases": aliases}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=metadata, **kw)
    if default is _MISSING:
        return dataclasses.field(metadata=metadata, **kw)
    return dataclasses.field(default=default, metadata=metadata, **kw)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for ``X``, ``X | None`` and ``Optional[X]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` (from YAML or a string on the command line) to the field type ``tp``."""
    inner, optional = _base_type(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise UserError(f"config key '{key}': a value is required")
    origin = typing.get_origin(inner)
    try:
        if inner is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if inner is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if inner is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if inner is str:
            if isinstance(value, (dict, list)):
                raise ValueError(value)
            return str(value)
        if origin is list:
            (elem,) = typing.get_args(inner) or (str,)
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list):
                raise ValueError(value)
            value = [v.strip() for item in value for v in (item.split(",") if isinstance(item, str) else [item])
                     if not isinstance(v, str) or v.strip()]
            return [coerce(key, v, elem) for v in value]
        if typing.get_origin(inner) is typing.Literal:
            choices = typing.get_args(inner)
            if value not in choices:
                raise UserError(f"config key '{key}': {value!r} is not one of {', '.join(map(str, choices))}")
            return value
    except (TypeError, ValueError):
        raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}") from None
    return value


def _type_name(tp: Any) -> str:
    inner, optional = _base_type(tp)
    name = getattr(inner, "__name__", str(inner))
    if typing.get_origin(inner) is list:
        name = "a list"
    return f"{name} or null" if optional else name


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add a ``--flag`` for every field of ``cls``; defaults are left as ``None`` so that
    ``load_config`` can tell which flags the user actually gave."""
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        names = ["--" + f.name.replace("_", "-")]
        for alias in f.metadata.get("aliases", ()):
            if alias not in names:
                names.append(alias)
        inner, _ = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not _MISSING else (
            f.default_factory() if f.default_factory is not _MISSING else None)
        if default not in (None, "", [], _MISSING):
            help_text += f" (default: {default})"
        if typing.get_origin(inner) is typing.Literal:
            help_text += f" [{'|'.join(map(str, typing.get_args(inner)))}]"
        if inner is bool:
            parser.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        elif typing.get_origin(inner) is list:  # repeatable: --adapter a=x --adapter b=y (or a=x,b=y)
            parser.add_argument(*names, dest=f.name, action="append", default=None, metavar=f.name.upper(),
                                help=help_text + " (repeatable)")
        else:
            parser.add_argument(*names, dest=f.name, default=None, metavar=f.name.upper(), help=help_text)


def load_config(cls: type, yaml_path: str | Path | None = None, overrides: list[str] | None = None,
                flags: dict[str, Any] | None = None, **fixed: Any):
    """Build ``cls`` from a YAML file, then ``key=value`` overrides, then explicit flags/kwargs.

    Unknown keys and values of the wrong type raise :class:`UserError` naming the key.
    """
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}

    def put(key: str, value: Any, origin: str) -> None:
        key = key.replace("-", "_")
        if key not in names:
            close = [n for n in names if n.startswith(key[:4])]
            hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
            raise UserError(f"{origin}: unknown config key '{key}'{hint}")
        values[key] = coerce(key, value, hints[key])

    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise UserError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            line = getattr(getattr(e, "problem_mark", None), "line", None)
            raise UserError(f"{path}{':' + str(line + 1) if line is not None else ''}: invalid YAML: "
                            f"{getattr(e, 'problem', e)}") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: a config file must be a mapping of key: value")
        for k, v in data.items():
            put(str(k), v, str(path))
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"override '{item}': expected key=value")
        k, v = item.split("=", 1)
        put(k.strip(), yaml.safe_load(v) if v.strip() else None, "command line")
    for source in (flags or {}, fixed):
        for k, v in source.items():
            if v is not None:
                put(k, v, "command line")
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is _MISSING and f.default_factory is _MISSING and f.name not in values]
    if missing:
        raise UserError(f"missing required option(s): {', '.join('--' + m.replace('_', '-') for m in missing)}")
    cfg = cls(**values)
    validate = getattr(cfg, "validate", None)
    if validate:
        validate()
    return cfg


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True)
