"""``convert``: dataset files of any known layout -> canonical JSONL."""

from instructglm.convert.convert import ConvertConfig, convert_files

__all__ = ["ConvertConfig", "convert_files"]
