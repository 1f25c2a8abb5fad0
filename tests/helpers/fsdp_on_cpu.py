"""``python tests/helpers/fsdp_on_cpu.py ARGS`` = ``instructglm ARGS`` with accelerate's FSDP turned on for CPU
processes. Test-only: accelerate enables FSDP only for GPU processes, while PyTorch's FSDP2 itself runs
on CPU tensors over gloo, so this lets the suite run the real sharded code path on loopback.
It also prints which class the prepared model's parameters have, so a test can see they are sharded."""

import sys

import accelerate.state as state
from accelerate import Accelerator
from accelerate.utils import DistributedType

_init = state.AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.fsdp_plugin = fsdp_plugin
        self.distributed_type = DistributedType.FSDP
        state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # later states copy it


_prepare = Accelerator.prepare


def _prepare_and_report(self, *args, **kwargs):
    prepared = _prepare(self, *args, **kwargs)
    params = [p for p in prepared[0].parameters() if p.requires_grad]
    print(f"prepared parameter class: {type(params[0].data).__name__}", file=sys.stderr, flush=True)
    return prepared


state.AcceleratorState.__init__ = _init_with_fsdp_on_cpu
Accelerator.prepare = _prepare_and_report

if __name__ == "__main__":
    from instructglm.cli import main

    sys.exit(main(sys.argv[1:]))
