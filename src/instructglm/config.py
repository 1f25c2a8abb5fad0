"""Dataclass configs that load from YAML, flags and ``key=value`` overrides.

Every stage's options are one dataclass; each field carries its help text in ``metadata``
(see :func:`opt`). A large config (``TrainConfig``) composes option groups: a field made with
:func:`group` holds another dataclass whose options keep flat user-facing keys (the group's
``KEY_PREFIX`` plus the field name: ``LoraOptions.rank`` is ``lora_rank``). Users only ever see
the flat keys. The same dataclass drives three things:

* ``add_arguments`` turns the options into ``--kebab-case`` flags (plus any legacy aliases),
* ``load_config`` merges a YAML file, ``key=value`` overrides and flags, in that order,
  checking every key and type and naming the offending key in the error,
* ``to_yaml`` writes the fully resolved config next to the results.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from instructglm.errors import UserError

_MISSING = dataclasses.MISSING


def opt(default: Any = _MISSING, help: str = "", aliases: tuple[str, ...] = (), **kw: Any) -> Any:
    """A dataclass field with help text and optional extra flag names (e.g. ChatGLM-Tuning's ``--lora_rank``)."""
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


def group(cls: type, help: str = "") -> Any:
    """A config field holding the option group ``cls`` (a dataclass whose fields all have defaults)."""
    return dataclasses.field(default_factory=cls, metadata={"help": help, "group": True})


@dataclasses.dataclass(frozen=True)
class Option:
    """One user-facing option: its flat key, the group holding it (None: a field of the config itself),
    its dataclass field and type."""

    key: str
    group: str | None
    field: dataclasses.Field
    type: Any

    @property
    def required(self) -> bool:
        return self.field.default is _MISSING and self.field.default_factory is _MISSING


@functools.lru_cache(maxsize=None)
def options(cls: type) -> dict[str, Option]:
    """Every option of ``cls`` by flat key, in field order (a group's options where the group is)."""
    found: dict[str, Option] = {}
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("group"):
            found[f.name] = Option(f.name, None, f, hints[f.name])
            continue
        inner = hints[f.name]
        prefix = getattr(inner, "KEY_PREFIX", "")
        inner_hints = _field_types(inner)
        for g in dataclasses.fields(inner):
            key = prefix + g.name
            if key in found:  # a programming error: two options would answer to one key
                raise TypeError(f"{cls.__name__}: option key '{key}' is defined twice")
            found[key] = Option(key, f.name, g, inner_hints[g.name])
    return found


TRUE_WORDS = ("1", "true", "yes", "on")  # the spellings transformers' TrainingArguments accept
FALSE_WORDS = ("0", "false", "no", "off")


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
            if isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS:
                return value.lower() in TRUE_WORDS
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


class _IntoGroup(argparse.Action):
    """Stores an option group's flag under ``args.<group>[flat key]``: the namespace mirrors the nested
    config, so a caller that keeps the namespace entries named like the config's fields keeps them all."""

    def __init__(self, option_strings, dest, key: str, kind: str = "value", **kwargs):
        self.key, self.kind = key, kind
        if kind == "flag":  # --x / --no-x, as BooleanOptionalAction
            option_strings = option_strings + ["--no-" + s[2:] for s in option_strings if s.startswith("--")]
            kwargs["nargs"] = 0
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        chosen = dict(getattr(namespace, self.dest) or {})
        if self.kind == "flag":
            chosen[self.key] = not option_string.startswith("--no-")
        elif self.kind == "append":
            chosen[self.key] = [*chosen.get(self.key, []), values]
        else:
            chosen[self.key] = values
        setattr(namespace, self.dest, chosen)


def _default_text(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not _MISSING else None


def _add_option(parser, option: Option) -> None:
    f, key = option.field, option.key
    names = ["--" + key.replace("_", "-")]
    names += [a for a in f.metadata.get("aliases", ()) if a not in names]
    inner, _ = _base_type(option.type)
    help_text = f.metadata.get("help", "")
    default = _default_text(f)
    if default not in (None, "", [], _MISSING):
        help_text += f" (default: {default})"
    if typing.get_origin(inner) is typing.Literal:
        help_text += f" [{'|'.join(map(str, typing.get_args(inner)))}]"
    kind = "flag" if inner is bool else "append" if typing.get_origin(inner) is list else "value"
    if kind == "append":  # repeatable: --adapter a=x --adapter b=y (or a=x,b=y)
        help_text += " (repeatable)"
    extra = {} if kind == "flag" else {"metavar": key.upper()}
    if option.group is not None:
        parser.add_argument(*names, dest=option.group, action=_IntoGroup, key=key, kind=kind, default=None,
                            help=help_text, **extra)
    elif kind == "flag":
        parser.add_argument(*names, dest=key, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    else:
        parser.add_argument(*names, dest=key, action="append" if kind == "append" else "store", default=None,
                            help=help_text, **extra)


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add a ``--flag`` for every option of ``cls``; defaults are left as ``None`` so that
    ``load_config`` can tell which flags the user actually gave. The options of a group are listed
    under the group's heading in ``--help``."""
    sections: dict[str | None, Any] = {}
    for option in options(cls).values():
        if option.key in skip:
            continue
        if option.group not in sections:
            sections[option.group] = parser if option.group is None else parser.add_argument_group(
                f"{option.group} options", _group_help(cls, option.group) or None)
        _add_option(sections[option.group], option)


def boolean_flags(cls: type) -> set[str]:
    """Every flag name of the boolean options of ``cls`` (``--fp16``, ``--skip_overlength``; not the
    ``--no-`` forms)."""
    names: set[str] = set()
    for option in options(cls).values():
        if _base_type(option.type)[0] is bool:
            names |= {"--" + option.key.replace("_", "-"), *option.field.metadata.get("aliases", ())}
    return names


def is_value_word(arg: str) -> bool:
    """Whether a command-line word after a flag that may go without a value is meant as its value
    (true, 0, none, maybe) rather than the next argument (a file, a flag, a key=value override)."""
    return arg.isalnum() and not Path(arg).exists()


def spell_booleans(argv: list[str], flags: set[str]) -> list[str]:
    """``argv`` with every boolean flag given a value (``--fp16 false``, ``--fp16=1``) written as the
    bare flag or its ``--no-`` form, which is all argparse knows; the values are those
    transformers' ``TrainingArguments`` take. A wrong value is a UserError naming the flag."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if name in flags and not eq and i + 1 < len(argv) and is_value_word(argv[i + 1]):
            eq, value = "=", argv[i + 1]
            i += 1
        if name in flags and eq:
            if value.lower() not in TRUE_WORDS + FALSE_WORDS:
                raise UserError(f"{name} {value}: expected true or false (also 1/0, yes/no, on/off), or {name} "
                                f"alone for true")
            out.append(name if value.lower() in TRUE_WORDS else "--no-" + name.lstrip("-"))
        else:
            out.append(argv[i])
        i += 1
    return out


def _group_help(cls: type, name: str) -> str:
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


def _read_yaml(path: Path) -> dict:
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
    return data


def load_config(cls: type, yaml_path: str | Path | None = None, overrides: list[str] | None = None,
                flags: dict[str, Any] | None = None, **fixed: Any):
    """Build ``cls`` from a YAML file, then ``key=value`` overrides, then explicit flags/kwargs, all
    by flat key (``lora_rank``, also for an option of a group). In ``flags``, a group's name may map
    to a dict of its flat keys (what :func:`add_arguments` leaves in the namespace).

    Unknown keys and values of the wrong type raise :class:`UserError` naming the key.
    """
    known = options(cls)
    values: dict[str, Any] = {}

    def put(key: str, value: Any, origin: str) -> None:
        key = key.replace("-", "_")
        if key not in known:
            close = [n for n in known if n.startswith(key[:4])]
            hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
            raise UserError(f"{origin}: unknown config key '{key}'{hint}")
        values[key] = coerce(key, value, known[key].type)

    if yaml_path is not None:
        for k, v in _read_yaml(Path(yaml_path)).items():
            put(str(k), v, str(yaml_path))
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"override '{item}': expected key=value")
        k, v = item.split("=", 1)
        put(k.strip(), yaml.safe_load(v) if v.strip() else None, "command line")
    groups = {o.group for o in known.values()} - {None}
    for source in (flags or {}, fixed):
        for k, v in source.items():
            for key, value in (v.items() if k in groups and isinstance(v, dict) else [(k, v)]):
                if value is not None:
                    put(key, value, "command line")
    missing = [o.key for o in known.values() if o.required and o.key not in values]
    if missing:
        raise UserError(f"missing required option(s): {', '.join('--' + m.replace('_', '-') for m in missing)}")
    cfg = _build(cls, known, values)
    validate = getattr(cfg, "validate", None)
    if validate:
        validate()
    return cfg


def _build(cls: type, known: dict[str, "Option"], values: dict[str, Any]):
    """``cls`` from flat values: each group's options go to the group's own dataclass first."""
    top: dict[str, Any] = {}
    by_group: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        option = known[key]
        if option.group is None:
            top[option.field.name] = value
        else:
            by_group.setdefault(option.group, {})[option.field.name] = value
    hints = _field_types(cls)
    for name, given in by_group.items():
        top[name] = hints[name](**given)
    return cls(**top)


def flat_values(cfg: Any) -> dict[str, Any]:
    """The config as one flat mapping (what ``to_yaml`` writes and ``load_config`` reads back)."""
    return {key: getattr(getattr(cfg, o.group) if o.group else cfg, o.field.name)
            for key, o in options(type(cfg)).items()}


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(flat_values(cfg), sort_keys=False, allow_unicode=True)
