"""``tokenize``: canonical JSONL -> a tokenized training dataset (template, masking, length policy)."""

from instructglm.tokenize.encode import SegmentEncoder
from instructglm.tokenize.manifest import read_manifest
from instructglm.tokenize.tokenize import TokenizeConfig, tokenize_file

__all__ = ["SegmentEncoder", "TokenizeConfig", "read_manifest", "tokenize_file"]
