"""A base model with its adapters, the template their prompts are rendered with, and the engine over them."""

from __future__ import annotations

from dataclasses import dataclass

from instructglm.generation.engine import Engine


def trained_templates(adapters: dict[str, str]) -> dict[str, str | None]:
    """The template each adapter was trained with (None when its run info does not say)."""
    from instructglm.runinfo import adapter_info

    return {name: adapter_info(path).template for name, path in adapters.items()}


@dataclass
class Loaded:
    engine: Engine
    template: object  # instructglm.templates.Template
    adapters: dict[str, str]  # name -> directory, in --adapter order
    names: list[str]  # the adapters attached to the model (names[0] is active)
    base: str = ""  # the base model as given or recorded by the adapters (models.adapters.choose_base)

    @property
    def model(self):
        return self.engine.model

    @property
    def tokenizer(self):
        return self.engine.tokenizer


def choose_adapters(adapter_specs: list[str] | str | None, template: str | None) -> tuple[dict[str, str], str]:
    """The ``--adapter`` specs as name -> directory, and the one template their prompts are rendered
    with (``--template``, else the adapters', else alpaca); nothing is loaded yet."""
    from instructglm.models.adapters import parse_adapters
    from instructglm.runinfo import choose_template

    adapters = parse_adapters(adapter_specs)
    return adapters, choose_template(template, trained_templates(adapters))


def load_engine(model: str | None, adapters: dict[str, str], template_name: str) -> Loaded:
    """Load the model once with every adapter attached, and the template (``model`` needs the tokenizer).
    ``model`` None is the base the adapters were trained on; each adapter is checked against the base."""
    from instructglm.models.adapters import choose_base, load_with_adapters
    from instructglm.templates import get_template

    base = choose_base(model, adapters)
    loaded_model, tokenizer, names = load_with_adapters(base, adapters)
    return Loaded(Engine(loaded_model, tokenizer), get_template(template_name, tokenizer), adapters, names, base)
