"""``merge``: fold adapters (in order), Freeze or full results into the base weights."""

from instructglm.merge.merge import MergeConfig, merge

__all__ = ["MergeConfig", "merge"]
