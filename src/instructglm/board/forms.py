"""The Train form, generated from the CLI's own config dataclass, and the command line it stands for.

The form is :func:`instructglm.config.options` of ``TrainConfig`` (every option with its help text,
default, type and group), so a new option appears in the board as soon as it exists on the command
line. What the form says becomes ``instructglm train --flag value ...``: only the options that differ
from their defaults (and the required ones) are written, each in its ``--kebab-case`` spelling, and
the board checks that line with the CLI's own parser and ``load_config`` before it launches it.
"""

from __future__ import annotations

import dataclasses
import shlex
import typing
from pathlib import Path
from typing import Any

import yaml

from instructglm.config import Option, _base_type, coerce, options, to_yaml
from instructglm.board.messages import BoardError

VERB = "train"


def _kind(option: Option) -> tuple[str, list]:
    inner, _ = _base_type(option.type)
    if typing.get_origin(inner) is typing.Literal:
        return "choice", [str(c) for c in typing.get_args(inner)]
    if typing.get_origin(inner) is list:
        return "list", []
    return {bool: "bool", int: "int", float: "float"}.get(inner, "str"), []


def _default(option: Option) -> Any:
    f = option.field
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def form_schema(cls: type) -> list[dict]:
    """Groups of fields, in the order ``train_config.yaml`` lists them; each field: key, flag, kind,
    choices, default, help, required, optional (may be empty)."""
    group_help = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
    groups: dict[str, dict] = {}
    for option in options(cls).values():
        name = option.group or "general"
        box = groups.setdefault(name, {"name": name, "help": group_help.get(name, "") if option.group else "",
                                       "fields": []})
        kind, choices = _kind(option)
        default = _default(option)
        box["fields"].append({
            "key": option.key, "flag": "--" + option.key.replace("_", "-"), "kind": kind, "choices": choices,
            "default": ",".join(map(str, default)) if isinstance(default, list) else default,
            "help": option.field.metadata.get("help", ""), "required": option.required,
            "optional": _base_type(option.type)[1]})
    return list(groups.values())


def _value(option: Option, raw: Any) -> Any:
    """The typed value of a form entry (strings from the page), or None for an empty optional one."""
    if isinstance(raw, str):
        raw = raw.strip()
        if raw == "" and (_base_type(option.type)[1] or option.required):
            return None
        if _kind(option)[0] in ("int", "float") and raw:
            try:
                raw = yaml.safe_load(raw)
            except yaml.YAMLError:
                pass
    return coerce(option.key, raw, option.type)


def command_args(cls: type, values: dict[str, Any]) -> list[str]:
    """The ``--flag value`` words for ``values`` (flat keys): the required options and every option
    that differs from its default. Unknown keys and wrong values are a UserError naming the key."""
    known = options(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise BoardError("unknown_options", keys=", ".join(unknown))
    words: list[str] = []
    for key, option in known.items():
        if key not in values:
            continue
        value = _value(option, values[key])
        if value is None:
            if option.required:
                raise BoardError("value_required", flag="--" + key.replace("_", "-"))
            continue
        if value == _default(option) and not option.required:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            for item in value:
                words += [flag, str(item)]
        else:
            words += [flag, _number_text(value)]
    return words


def _number_text(value: Any) -> str:
    """``repr`` keeps every digit of a float (``2e-05``), as the CLI reads it back."""
    return repr(value) if isinstance(value, float) else str(value)


def resolve(args: list[str]):
    """The ``TrainConfig`` the CLI builds from ``instructglm train ARGS`` (its own parser and loader),
    so the board shows exactly what the run will use, and refuses what the CLI would refuse."""
    from instructglm import cli

    verb = cli.VERBS[VERB]
    argv, _ = verb.prepare([VERB, *args])
    parser = cli.build_parser()
    parser.exit_on_error = False
    try:
        parsed = cli.parse_command_line(argv, parser)
    except SystemExit:
        raise BoardError("not_understood", args=shlex.join(args)) from None
    cls, _ = verb.target()
    return verb.configure(parsed, cls)


def command_line(args: list[str]) -> str:
    return shlex.join(["instructglm", VERB, *args])


def preview(cls: type, values: dict[str, Any]) -> dict:
    """``{"args", "command", "yaml"}`` for the form's values, checked like the CLI checks them."""
    args = command_args(cls, values)
    cfg = resolve(args)
    return {"args": args, "command": command_line(args), "yaml": to_yaml(cfg)}


def presets(root: Path) -> dict[str, dict]:
    """The ready configs (``configs/*.yaml`` of a source checkout): name -> flat values."""
    found = {}
    for path in sorted(root.glob("*.yaml")) if root.is_dir() else []:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            continue
        if isinstance(data, dict):
            found[path.stem] = {str(k): v for k, v in data.items()}
    return found
