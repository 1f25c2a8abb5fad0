"""``instructglm.json``: what a training (or merge) result says about itself, and the template choice.

``train`` and ``merge`` write it; ``infer``, ``chat``, ``serve``, ``merge``, ``export`` and
``report`` read it. It is the one owner of that file (litgpt's ``save_prompt_style`` idea): nobody
else opens it, and "the template a prompt is rendered with" is decided only by
:func:`choose_template`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from instructglm.constants import DEFAULT_TEMPLATE, RUN_INFO
from instructglm.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class RunInfo:
    base_model: str | None = None  # embedded name, hub id, or an absolute directory (see recorded_base)
    method: str = "lora"
    template: str | None = None
    tokenizer: str | None = None  # fingerprint of the tokenizer the data was encoded with
    dataset: str | None = None
    steps: int | None = None
    processes: int = 1
    base_config: dict | None = None  # the base's family and sizes (models.adapters.base_signature)
    extra: dict = field(default_factory=dict)  # merged_from, merge_check, keys of newer versions

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: dict) -> "RunInfo":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in names},
                   extra={k: v for k, v in data.items() if k not in names})

    def save(self, directory: str | Path) -> Path:
        from instructglm.files import write_json

        path = Path(directory) / RUN_INFO
        write_json(path, self.to_json())
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "RunInfo | None":
        """The run info in ``directory``, or None when it holds none (e.g. a plain PEFT adapter)."""
        path = Path(directory) / RUN_INFO
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a JSON object")
        return cls.from_json(data)

    @staticmethod
    def has(directory: str | Path) -> bool:
        return (Path(directory) / RUN_INFO).is_file()


def recorded_base(spec: str) -> str:
    """How a base model is recorded: an embedded name or hub id as given, a local directory or file as
    an absolute path (so the result is usable from any working directory)."""
    from instructglm.models.embedded import EMBEDDED

    path = Path(spec).expanduser()
    if spec in EMBEDDED or not path.exists():
        return spec
    return str(path.resolve())


def adapter_info(path: str | Path | None) -> RunInfo:
    """The run info of an ``--adapter`` directory; an empty one when it has none."""
    if not path:
        return RunInfo()
    if not Path(path).is_dir():
        raise UserError(f"--adapter {path}: directory not found")
    return RunInfo.load(path) or RunInfo()


def choose_template(requested: str | None, trained: dict[str, str | None], mixed: str = "error") -> str:
    """The template to render prompts with: ``requested``, else the adapters', else ``alpaca``.

    ``trained`` maps each adapter to the template it was trained with (None when unknown). A
    request that contradicts a trained template is refused: prompting an adapter another way
    silently degrades its answers. Adapters trained with different templates are refused
    (``mixed="error"``, one prompt serves them all) or resolved to the last one (``mixed="last"``,
    merge: the merged model answers like its last adapter).
    """
    if requested == "auto" and any(trained.values()):
        requested = None  # "the model's own template" means the one the adapters were trained with
    known = {name: t for name, t in trained.items() if t}
    distinct = list(dict.fromkeys(known.values()))
    if requested and distinct and any(t != requested for t in distinct):
        name, t = next((n, t) for n, t in known.items() if t != requested)
        raise UserError(f"--template {requested}: the adapter {name} was trained with template '{t}'; "
                        f"prompting it another way silently degrades answers")
    if len(distinct) > 1:
        listed = ", ".join(f"{n}: {t}" for n, t in known.items())
        if mixed == "error":
            raise UserError(f"--adapter: the adapters were trained with different templates ({listed}); "
                            f"give them one template at a time")
        log.warning("the adapters were trained with different templates (%s); using the last one's, '%s'",
                    listed, distinct[-1])
    return requested or (distinct[-1] if distinct else DEFAULT_TEMPLATE)
