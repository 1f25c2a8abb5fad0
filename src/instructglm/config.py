"""Dataclass configs that load from YAML, flags and ``key=value`` overrides.

Every stage's options are one dataclass; each field carries its help text in ``metadata``
(see :func:`opt`). A large config (``TrainConfig``) composes option groups: a field made with
:func:`group` holds another dataclass whose options keep flat user-facing keys (the group's
``KEY_PREFIX`` plus the field name: ``LoraOptions.rank`` is ``lora_rank``). Users only ever see
the flat keys. The same dataclass drives three things:

* ``add_arguments`` turns the options into ``--kebab-case`` flags (plus any legacy aliases),
* ``load_config`` merges a YAML file, ``key=value`` overrides and flags, in that order,
  checking every key, type and number and naming the offending key and where it came from,
* ``to_yaml`` writes the fully resolved config next to the results.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from instructglm.errors import UserError

_MISSING = dataclasses.MISSING


def opt(default: Any = _MISSING, help: str = "", aliases: tuple[str, ...] = (), *, min: float | None = None,
        max: float | None = None, above: float | None = None, below: float | None = None, finite: bool = True,
        **kw: Any) -> Any:
    """A dataclass field with help text and optional extra flag names (e.g. ChatGLM-Tuning's ``--lora_rank``).

    A number's allowed values are declared here and checked in one place (:func:`number_problem`),
    wherever the value comes from: ``min``/``max`` are inclusive bounds, ``above``/``below`` exclusive
    ones; a float must be finite (no nan/inf) unless ``finite=False``; an int must fit in 64 bits."""
    metadata = {"help": help, "aliases": aliases, "range": Range(min, max, above, below), "finite": finite}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=metadata, **kw)
    if default is _MISSING:
        return dataclasses.field(metadata=metadata, **kw)
    return dataclasses.field(default=default, metadata=metadata, **kw)


INT64 = (-2**63, 2**63 - 1)  # what torch and numpy take as an integer
SEED = {"min": 0, "max": 2**32 - 1}  # the seeds numpy (and so accelerate's set_seed) accept: opt(..., **SEED)


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed values of a number option (None: no bound on that side)."""

    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None

    def __str__(self) -> str:  # as --help and the errors say it: "at least 1", "> 0", "in [0, 1)"
        low = self.min if self.min is not None else self.above
        high = self.max if self.max is not None else self.below
        if low is not None and high is not None:
            if self.min is not None and self.max is not None:
                return f"between {_num(low)} and {_num(high)}"
            return f"in {'[(' [self.min is None]}{_num(low)}, {_num(high)}{'])' [self.max is None]}"
        if low is not None:
            return ("at least 1" if low == 1 else f">= {_num(low)}") if self.min is not None else f"> {_num(low)}"
        return "" if high is None else f"<= {_num(high)}" if self.max is not None else f"< {_num(high)}"

    def allows(self, value: float) -> bool:
        return ((self.min is None or value >= self.min) and (self.max is None or value <= self.max)
                and (self.above is None or value > self.above) and (self.below is None or value < self.below))


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)  # 4294967295 in full, 1.17549e-38 short


def number_problem(value: Any, field: dataclasses.Field) -> str | None:
    """What is wrong with ``value`` as the number option ``field`` (None: nothing, or not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None if not field.metadata.get("finite", True) else f"must be a finite number, got {value}"
    if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        return f"must fit in 64 bits ({INT64[0]} to {INT64[1]}), got {shown(value)}"
    limits = field.metadata.get("range") or Range()
    return None if limits.allows(value) else f"must be {limits}, got {shown(value)}"


def check_numbers(obj: Any, error: Any = None, cls: type | None = None) -> None:
    """Check the number fields of the dataclass ``obj`` (those declared by ``cls``, default its own class)
    against their declaration (see :func:`opt`), for a config built in code rather than by
    :func:`load_config`; ``error(key, problem)`` makes the error (default: a UserError "key: problem")."""
    prefix = getattr(obj, "KEY_PREFIX", "")
    for f in dataclasses.fields(cls or obj):
        problem = number_problem(getattr(obj, f.name), f)
        if problem:
            raise error(prefix + f.name, problem) if error else UserError(f"{prefix}{f.name}: {problem}")


def shown(value: Any, limit: int = 40) -> str:
    """``value`` as an error message shows it: a long value is cut (a 5,000-digit number is one line)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for ``X``, ``X | None`` and ``Optional[X]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


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
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("group"):
            found[f.name] = Option(f.name, None, f, hints[f.name])
            continue
        inner = hints[f.name]
        prefix = getattr(inner, "KEY_PREFIX", "")
        inner_hints = typing.get_type_hints(inner)
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
        if inner in (int, float) and isinstance(value, bool):
            raise ValueError(value)
        if inner is int:  # (a string of over 4,300 digits would make int() raise, not in this message's words)
            if (isinstance(value, float) and not value.is_integer()) or (isinstance(value, str) and len(value) > 99):
                raise ValueError(value)
            return int(value)
        if inner is float:
            return float(value)  # "nan" and "inf" are floats here; number_problem refuses them
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
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {shown(value)}") from None
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
    notes = [f"default: {default}"] if default not in (None, "", [], _MISSING) else []
    limits = str(f.metadata.get("range") or "")
    notes += [limits] if limits else []
    if notes:
        help_text += f" ({'; '.join(notes)})"
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


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, refusing an integer too long for Python to read with a line number (Python
    raises a bare ValueError past 4,300 digits)."""

    def construct_yaml_int(self, node):
        if len(node.value) > 100:
            raise yaml.constructor.ConstructorError(None, None, f"an integer of {len(node.value)} digits is too "
                                                    "large", node.start_mark)
        return super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    """The mapping in the YAML file ``path`` and the line of each of its keys."""
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    loader = _Loader(path.read_text(encoding="utf-8"))
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise UserError(f"{path}{':' + str(line + 1) if line is not None else ''}: invalid YAML: "
                        f"{getattr(e, 'problem', None) or e}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must be a mapping of key: value")
    return data, {str(k.value): k.start_mark.line + 1 for k, _ in getattr(node, "value", ())}  # (None: empty)


def _override(item: str) -> tuple[str, Any]:
    """``key=value`` (the value read as YAML, so ``null``, ``[a, b]`` and ``1e-4`` mean what they do in a file)."""
    if "=" not in item:
        raise UserError(f"override '{item}': expected key=value")
    key, text = item.split("=", 1)
    try:
        return key.strip(), _Loader(text).get_single_data() if text.strip() else None
    except yaml.YAMLError as e:
        raise UserError(f"override {shown(item)}: invalid value: {getattr(e, 'problem', None) or e}") from None


def _located(message: str, option: Option | None, origin: str) -> str:
    """``message`` about ``option`` saying where its value came from: ``FILE:LINE`` of a config file,
    ``override KEY=VALUE`` (on the command line) or ``flag`` (named with its other spellings)."""
    if origin == "flag" and option is not None:
        flag = "--" + option.key.replace("_", "-")
        names = [flag, *(a for a in option.field.metadata.get("aliases", ()) if a.replace("_", "-") != flag)]
        return f"{message} (flag {'/'.join(names)})"
    if origin.startswith("override "):
        return f"command line: {message} ({origin if len(origin) < 70 else origin[:60] + '...'})"
    path, _, line = origin.rpartition(":")
    return f"{path}: {message} (line {line})"


def load_config(cls: type, yaml_path: str | Path | None = None, overrides: list[str] | None = None,
                flags: dict[str, Any] | None = None, **fixed: Any):
    """Build ``cls`` from a YAML file, then ``key=value`` overrides, then explicit flags/kwargs, all
    by flat key (``lora_rank``, also for an option of a group). In ``flags``, a group's name may map
    to a dict of its flat keys (what :func:`add_arguments` leaves in the namespace).

    Unknown keys, values of the wrong type and numbers out of their declared range (:func:`opt`)
    raise :class:`UserError` naming the key and where the value came from (file and line, override
    or flag), before any other check of the config.
    """
    known = options(cls)
    values: dict[str, Any] = {}

    def put(key: str, value: Any, origin: str) -> None:
        key = key.replace("-", "_")
        if key not in known:
            close = [n for n in known if n.startswith(key[:4])]
            hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
            raise UserError(_located(f"unknown config key '{key}'{hint}", None, origin))
        try:
            values[key] = coerce(key, value, known[key].type)
            problem = number_problem(values[key], known[key].field)
        except UserError as e:
            raise UserError(_located(str(e), known[key], origin)) from None
        if problem:
            raise UserError(_located(f"{key}: {problem}", known[key], origin))

    if yaml_path is not None:
        data, lines = _read_yaml(Path(yaml_path))
        for k, v in data.items():
            put(str(k), v, f"{yaml_path}:{lines.get(str(k), '?')}")
    for item in overrides or []:
        put(*_override(item), "override " + item)
    groups = {o.group for o in known.values()} - {None}
    for source in (flags or {}, fixed):
        for k, v in source.items():
            for key, value in (v.items() if k in groups and isinstance(v, dict) else [(k, v)]):
                if value is not None:
                    put(key, value, "flag")
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
    hints = typing.get_type_hints(cls)
    for name, given in by_group.items():
        top[name] = hints[name](**given)
    return cls(**top)


def flat_values(cfg: Any) -> dict[str, Any]:
    """The config as one flat mapping (what ``to_yaml`` writes and ``load_config`` reads back)."""
    return {key: getattr(getattr(cfg, o.group) if o.group else cfg, o.field.name)
            for key, o in options(type(cfg)).items()}


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(flat_values(cfg), sort_keys=False, allow_unicode=True)
