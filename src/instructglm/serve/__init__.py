"""``serve``: OpenAI-compatible HTTP API and chat page for a base model and its adapters."""

from instructglm.serve.app import ServeConfig, serve

__all__ = ["ServeConfig", "serve"]
