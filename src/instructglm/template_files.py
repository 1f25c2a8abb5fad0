"""Templates described by a small YAML/JSON file: ``--template path/to/file.yaml`` (or ``.json``).

A mapping with these keys (all strings unless said otherwise)::

    user: "<|user|>\\n{content}\\n"        # required: one user turn; {content} = the user text,
                                          # {round} = the 1-based round number
    assistant_prefix: "<|assistant|>\\n"  # opens every response (masked, part of the prompt)
    assistant_suffix: ""                  # closes every response, trained (e.g. "<|im_end|>")
    eos: true                             # (bool) append the tokenizer's EOS after the suffix, trained
    turn_separator: "\\n"                  # masked text between a response and the next turn
    system: "{content}\\n\\n"               # how a system message is written (first, masked)
    prefix: ""                            # masked text at the very start of every conversation
    stop: ["<|user|>"]                    # (list) generation is cut at the first of these

``eos: false`` needs a non-empty ``assistant_suffix`` (a response must end somewhere). Unknown
keys are refused. ``{content}`` and ``{round}`` are replaced literally, so other braces are fine.
The template's identity is ``PATH#sha256=HASH`` (absolute path + first 16 hex digits of the
content hash): it is stored in the tokenized dataset's manifest and in the adapter's run info,
and :func:`get_template` refuses that identity when the file has changed since.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from instructglm.errors import UserError
from instructglm.record import Message
from instructglm.templates import Segment, Template


_FILE_KEYS = {"name", "system", "user", "assistant_prefix", "assistant_suffix", "turn_separator", "stop",
              "eos", "prefix"}


class FileTemplate(Template):
    """A template described by a small YAML/JSON file (schema in the module docstring)."""

    def __init__(self, path: str | Path, spec: dict, digest: str):
        self.path = str(Path(path).resolve())
        self.digest = digest
        self.name = f"{self.path}#sha256={digest}"
        self.user = spec["user"]
        self.system = spec.get("system", "{content}\n\n")
        self.prefix = spec.get("prefix", "")
        self.opening = spec.get("assistant_prefix", "")
        self.suffix = spec.get("assistant_suffix", "")
        self.separator = spec.get("turn_separator", "")
        self.eos = spec.get("eos", True)
        self.stop = tuple(spec.get("stop", ()))

    def segments(self, messages: list[Message]) -> list[Segment]:
        segments: list[Segment] = []
        pending, rnd = self.prefix, 0
        for m in messages:
            if m.role == "system":
                pending += self.system.replace("{content}", m.content)
            elif m.role == "user":
                rnd += 1
                if rnd > 1:
                    pending += self.separator
                pending += self.user.replace("{round}", str(rnd)).replace("{content}", m.content)
                pending += self.opening
            else:
                segments.append(Segment(pending, False))
                if self.suffix:
                    segments.append(Segment(m.content, True, eos=False))
                    segments.append(Segment(self.suffix, True, eos=self.eos))
                else:
                    segments.append(Segment(m.content, True))
                pending = ""
        if pending:
            segments.append(Segment(pending, False))
        return segments

    def manifest(self) -> dict:
        return {"template": self.name, "template_file": self.path, "template_sha256": self.digest}


def load_template_file(path: str | Path, expect_digest: str | None = None) -> FileTemplate:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--template {path}: template file not found")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()[:16]
    if expect_digest and digest != expect_digest:
        raise UserError(f"{path}: the template file changed since the data was tokenized with it "
                        f"(sha256 {digest}, expected {expect_digest}); tokenize and train again, or restore it")
    try:
        text = raw.decode("utf-8-sig")
        spec = json.loads(text) if path.suffix.lower() == ".json" else _yaml(text)
    except (UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: not a valid template file: {e}") from None
    if not isinstance(spec, dict):
        raise UserError(f"{path}: a template file must be a mapping (keys: {', '.join(sorted(_FILE_KEYS))})")
    for key, value in spec.items():
        if key not in _FILE_KEYS:
            raise UserError(f"{path}: unknown template key '{key}' (known: {', '.join(sorted(_FILE_KEYS))})")
        if key == "eos":
            if not isinstance(value, bool):
                raise UserError(f"{path}: key 'eos' must be true or false, got {value!r}")
        elif key == "stop":
            if isinstance(value, str):
                spec["stop"] = [value]
            elif not (isinstance(value, list) and all(isinstance(v, str) and v for v in value)):
                raise UserError(f"{path}: key 'stop' must be a list of non-empty strings")
        elif not isinstance(value, str):
            raise UserError(f"{path}: key '{key}' must be a string, got {type(value).__name__}")
    if "user" not in spec:
        raise UserError(f"{path}: missing key 'user' (e.g. user: \"<|user|>\\n{{content}}\\n\")")
    if "{content}" not in spec["user"]:
        raise UserError(f"{path}: key 'user' must contain {{content}}")
    if not spec.get("eos", True) and not spec.get("assistant_suffix"):
        raise UserError(f"{path}: with eos: false, 'assistant_suffix' must say where a response ends")
    return FileTemplate(path, spec, digest)


def _yaml(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ValueError(f"line {mark.line + 1}: {getattr(e, 'problem', e)}" if mark else str(e)) from None
