"""``tokenize``: canonical JSONL -> a tokenized training dataset (template, masking, length policy)."""

from instructglm.tokenize.tokenize import TokenizeConfig, tokenize_file

__all__ = ["TokenizeConfig", "tokenize_file"]
