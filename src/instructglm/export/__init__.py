"""``export``: GGUF for llama.cpp and an Ollama Modelfile."""

from instructglm.export.gguf import ExportConfig, export

__all__ = ["ExportConfig", "export"]
