"""``chat``: talk to a model and its adapters in the terminal, streaming."""

from instructglm.chat.chat import ChatConfig, chat

__all__ = ["ChatConfig", "chat"]
