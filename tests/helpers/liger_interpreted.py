"""``python tests/helpers/liger_interpreted.py ARGS`` = ``instructglm ARGS`` with Liger's Triton kernels run by
Triton's CPU interpreter (``TRITON_INTERPRET=1``). Test-only, so that the suite checks the Liger path
numerically without a GPU. Two gaps of the interpreter (not of Liger) are bridged here:

* a Python float passed to a kernel stays a Python float (compiled Triton makes it an fp32 scalar),
  so ``eps.to(tl.float32)`` in a kernel fails: floats are wrapped as fp32 scalars;
* ``triton.language.extra.libdevice.rsqrt`` / ``tanh`` are declarations the interpreter does not
  implement: the Liger modules that use them get interpretable equivalents.
"""

import atexit
import importlib
import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import numpy as np  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
import triton.runtime.interpreter as interpreter  # noqa: E402

_convert = interpreter._implicit_cvt


def _convert_floats_too(arg):
    if isinstance(arg, float):
        return tl.tensor(interpreter.TensorHandle(np.array([arg], dtype=np.float32), tl.float32), tl.float32)
    return _convert(arg)


interpreter._implicit_cvt = _convert_floats_too


@triton.jit
def _rsqrt(x):
    return tl.math.rsqrt(x)


@triton.jit
def _tanh(x):
    return 2 * tl.sigmoid(2 * x) - 1


for module, names in {"rms_norm": ("rsqrt",), "geglu": ("tanh",), "cross_entropy": ("tanh",)}.items():
    mod = importlib.import_module(f"liger_kernel.ops.{module}")
    for name in names:
        if hasattr(mod, name):
            setattr(mod, name, _rsqrt if name == "rsqrt" else _tanh)

# Count the kernels that ran, so a test can see the Liger path was taken (printed at exit).
calls = {}


def _counting(name, forward):
    def run(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        return forward(*args, **kwargs)

    return staticmethod(run)


ops = importlib.import_module("liger_kernel.ops")
for name in ("LigerRMSNormFunction", "LigerRopeFunction", "LigerSiLUMulFunction", "LigerGELUMulFunction",
             "LigerFusedLinearCrossEntropyFunction"):
    cls = getattr(ops, name)
    cls.forward = _counting(name, cls.forward)
atexit.register(lambda: print(f"liger kernel calls: {json.dumps(calls, sort_keys=True)}", file=sys.stderr))

if __name__ == "__main__":
    from instructglm.cli import main

    sys.exit(main(sys.argv[1:]))
