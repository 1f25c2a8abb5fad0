"""``instructglm board``: the local web UI over the CLI."""

from instructglm.board.app import BoardConfig, board, main

__all__ = ["BoardConfig", "board", "main"]
