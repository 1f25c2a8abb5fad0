"""``demo``: the whole pipeline on the embedded model and data."""

from instructglm.demo.demo import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
