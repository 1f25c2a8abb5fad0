"""``python tests/helpers/deepspeed_on_cpu.py ARGS`` = ``instructglm ARGS`` for DeepSpeed processes on CPU.
Test-only: DeepSpeed's CPU backend compiles a shared-memory all-reduce op (C++, over a minute on a
fresh machine) that only inference uses; training over gloo runs without it, so it is not built."""

import importlib
import sys

importlib.import_module("deepspeed.comm.torch")
sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None

if __name__ == "__main__":
    from instructglm.cli import main

    sys.exit(main(sys.argv[1:]))
