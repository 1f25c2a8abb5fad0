"""The tuning methods by name. Each method lives in ``methods/<name>/``: its option group (a dataclass
whose fields carry their help and are checked in ``__post_init__``) and a :class:`TuningMethod`
subclass, registered with :func:`register`. ``get_method(name)`` is how the trainer, ``merge`` and
model loading reach them."""

from __future__ import annotations

from pathlib import Path

from instructglm.errors import UserError


class TuningMethod:
    """What every method provides. ``apply`` makes only the method's parameters trainable; ``save``
    writes only those, as safetensors (``state``: the tensors already gathered whole by the trainer,
    needed when FSDP shards them; None reads them from the model); ``load`` puts them back for a
    resume; ``attach`` gives a base model with them, for inference and merging."""

    NAME = ""
    OPTIONS: type | None = None  # the option group; the train config holds it in the field named NAME
    MERGEABLE = True
    USES_MODEL_FORWARD = False  # True: the loss must go through the model's own forward (P-Tuning's prefix)
    TRAINS_BASE_WEIGHTS = False  # True: the base weights themselves change, so they cannot be quantized

    def options_of(self, cfg):
        """This method's option group in a train config (None for a method without options)."""
        return getattr(cfg, self.NAME) if self.OPTIONS else None

    def apply(self, model, options):
        raise NotImplementedError

    def save(self, model, directory: str | Path, state: dict | None = None) -> None:
        raise NotImplementedError

    def load(self, model, directory: str | Path) -> None:
        raise NotImplementedError

    def attach(self, base, directory: str | Path, name: str = "default"):
        raise NotImplementedError

    def check(self, cfg) -> None:
        """Refuse a train config this method cannot run (called when the config is built)."""
        if cfg.load_in != "none" and self.TRAINS_BASE_WEIGHTS:
            raise UserError(f"load_in={cfg.load_in}: quantized base weights cannot be trained with "
                            f"method {self.NAME}; use lora")


METHODS: dict[str, TuningMethod] = {}


def register(cls: type[TuningMethod]) -> type[TuningMethod]:
    """Class decorator: make the method available under its ``NAME``."""
    METHODS[cls.NAME] = cls()
    return cls


def get_method(name: str) -> TuningMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"method '{name}' is not available; choose one of {', '.join(METHODS)}") from None
