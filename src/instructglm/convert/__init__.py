"""``convert``: dataset files of any known layout -> canonical JSONL."""

from instructglm.convert.convert import ConvertConfig, convert_files
from instructglm.convert.reading import read_conversations

__all__ = ["ConvertConfig", "convert_files", "read_conversations"]
