"""How the processes of one training run share the work: one process, DDP, FSDP or DeepSpeed ZeRO.

The launcher chooses (``torchrun`` gives DDP, ``accelerate launch --config_file configs/accelerate/X.yaml``
gives what the file says) and accelerate sets the engine up. What still differs between engines in
the training loop lives here, so ``recipe.py`` reads the same for all of them:

* backward and the optimizer step (DeepSpeed accumulates, clips and steps inside its engine),
* the gradient norm (over all shards),
* the trained weights and the optimizer state gathered for a checkpoint. Under DDP and FSDP the
  optimizer state is written whole and keyed by parameter name, so it resumes in any number of
  processes and under either engine; DeepSpeed's own partitioned state resumes only under DeepSpeed
  with the same number of processes (DeepSpeed's limit without its "universal checkpoint" tool).
"""

from __future__ import annotations

import math
import os

from instructglm.console import drop_deepspeed_cpu_notice
from instructglm.errors import UserError


def _to_cpu(tree):
    import torch
    from torch.utils._pytree import tree_map

    return tree_map(lambda x: x.detach().cpu() if isinstance(x, torch.Tensor) else x, tree)


def _deepspeed_checkpoint_classes() -> list:
    """The plain DeepSpeed classes inside its optimizer state, allowed by name when loading it with
    ``weights_only=True`` (nothing else in a checkpoint may run code when read)."""
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:
        return []
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def read_optimizer_state(path) -> dict:
    import torch

    try:
        with torch.serialization.safe_globals(_deepspeed_checkpoint_classes()):
            return torch.load(path, weights_only=True)
    except torch.serialization.pickle.UnpicklingError as e:  # what weights_only raises
        raise UserError(f"{path}: not an optimizer state this version can read safely (written under DeepSpeed "
                        f"without DeepSpeed installed here?): {str(e).splitlines()[0]}") from None
    except (OSError, RuntimeError, EOFError, ValueError) as e:  # missing, cut short (zip), bytes changed
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: damaged or unreadable ({first}); resume from an earlier checkpoint with "
                        f"--resume DIR") from None


class DistributedBackend:
    """The accelerator of a run plus the engine-specific parts of the loop (see the module docstring)."""

    def __init__(self, mixed_precision: str):
        import torch
        from accelerate import Accelerator
        from accelerate.utils import DistributedType, InitProcessGroupKwargs

        from instructglm.train.cpu_process import prepare_cpu_process

        drop_deepspeed_cpu_notice()

        kwargs = {"mixed_precision": mixed_precision}
        if not torch.cuda.is_available():
            prepare_cpu_process()  # malloc keeps freed memory, denormals flush (train/cpu_process.py)
            if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
                # accelerate turns DeepSpeed off for cpu=True; naming gloo keeps it on and counts the processes
                kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
            else:
                kwargs["cpu"] = True  # gloo when launched with several processes
        self.accelerator = Accelerator(**kwargs)
        kind = self.accelerator.distributed_type
        self.fsdp = kind == DistributedType.FSDP
        self.deepspeed = kind == DistributedType.DEEPSPEED
        # ZeRO-3: transformers partitions the weights as it loads them (accelerate registers the config)
        self.zero3 = self.deepspeed and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        self.world = self.accelerator.num_processes
        self.wrapped = self.inner = None
        self.trainable: list = []

    # ------------------------------------------------------------------ setting up

    def describe(self) -> str:
        """How the processes share the work, in the words users configure it with."""
        state = self.accelerator.state
        if self.fsdp:
            return f"FSDP{state.fsdp_plugin.fsdp_version} (parameters, gradients and optimizer state sharded)"
        if self.deepspeed:
            what = {1: "optimizer state", 2: "optimizer state and gradients",
                    3: "parameters, gradients and optimizer state"}.get(state.deepspeed_plugin.zero_stage, "")
            return f"DeepSpeed ZeRO-{state.deepspeed_plugin.zero_stage} ({what} sharded)"
        return "DDP" if self.world > 1 else "one process"

    def check(self, cfg, method) -> None:
        """Refuse combinations that cannot work, before the model loads."""
        if (self.fsdp or self.deepspeed) and method.USES_MODEL_FORWARD:
            raise UserError(f"method {method.NAME} does not run under {'FSDP' if self.fsdp else 'DeepSpeed'} "
                            f"(PEFT builds its prefix outside the sharded forward); its few parameters need no "
                            f"sharding: launch without the {'FSDP' if self.fsdp else 'DeepSpeed'} config")
        if self.deepspeed:
            plugin = self.accelerator.state.deepspeed_plugin
            for key in ("optimizer", "scheduler"):
                if key in plugin.deepspeed_config:
                    raise UserError(f"DeepSpeed config: remove '{key}'; instructglm trains with AdamW and the "
                                    f"schedule of its own config (learning_rate, lr_scheduler, warmup_steps)")
            # Batch, accumulation and clipping come from the train config, whatever the DeepSpeed file says.
            c = plugin.deepspeed_config
            schedule = cfg.schedule
            c["train_micro_batch_size_per_gpu"] = schedule.per_device_train_batch_size
            c["gradient_accumulation_steps"] = schedule.gradient_accumulation_steps
            c["train_batch_size"] = (schedule.per_device_train_batch_size * schedule.gradient_accumulation_steps
                                     * self.world)
            c["gradient_clipping"] = cfg.optimizer.max_grad_norm
            if plugin.zero_stage == 3:  # the trained weights are gathered for every save
                c.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True

    def prepare(self, module, optimizer):
        """Wrap the loss module and optimizer for the engine; returns the module to call."""
        from accelerate.utils import DistributedType

        self.wrapped, optimizer = self.accelerator.prepare(module, optimizer)
        # The loss module itself (FSDP shards in place). One process: prepare returned the module, and
        # unwrap_model would only import DeepSpeed (about 0.4 s when installed) to look for its engine.
        single = self.accelerator.distributed_type == DistributedType.NO
        self.inner = self.wrapped if single else self.accelerator.unwrap_model(self.wrapped)
        self.trainable = [p for p in self.inner.parameters() if p.requires_grad]  # FSDP replaced them
        return self.wrapped, optimizer

    # ------------------------------------------------------------------ the loop

    def backward(self, loss, last: bool) -> None:
        """Backward for one micro-batch; ``last``: the final micro-batch of the optimizer step. The loss is
        already divided by the step's token count, so nothing may divide it again."""
        if self.deepspeed:
            engine = self.wrapped
            engine.set_gradient_accumulation_boundary(last)
            engine.backward(loss, scale_wrt_gas=False)
            if last:
                engine.step()  # clips, steps the optimizer and zeroes gradients
        else:
            self.accelerator.backward(loss)

    def global_sum(self, value: float) -> float:
        """``value`` summed over all processes."""
        import torch

        if self.world == 1:
            return value
        device = self.accelerator.device
        return float(self.accelerator.reduce(torch.tensor([float(value)], device=device), "sum")[0])

    def grad_norm(self, max_norm: float) -> float:
        """The gradient norm over all shards; clips to ``max_norm`` when > 0 (DeepSpeed has clipped already)."""
        if self.deepspeed:
            norm = self.wrapped.get_global_grad_norm()
            return float("nan") if norm is None else float(norm)
        return float(self.accelerator.clip_grad_norm_(self.trainable, max_norm if max_norm > 0 else math.inf))

    # ------------------------------------------------------------------ checkpoints

    def trained_state(self) -> dict:
        """The trained tensors, whole and on the CPU, keyed like the tuned model's own state dict.

        Every process must call this (FSDP and ZeRO-3 gather the shards); the main process gets the
        tensors, the others an empty dict. Frozen base weights are not gathered (except under ZeRO-3,
        whose gather is all-or-nothing)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        if self.deepspeed:
            names = {n for n, p in self.inner.named_parameters() if p.requires_grad}
            state = self.accelerator.get_state_dict(self.wrapped) or {}  # ZeRO-3: None off the main process
            state = {k: v.detach().cpu() for k, v in state.items() if k in names}
        else:
            state = get_model_state_dict(self.inner, options=StateDictOptions(
                full_state_dict=True, cpu_offload=True, ignore_frozen_params=True))
        if not self.accelerator.is_main_process:
            return {}
        return {k.removeprefix("model."): v for k, v in state.items()}

    def optimizer_state(self, optimizer) -> dict:
        """The optimizer state to checkpoint (collective, like :meth:`trained_state`)."""
        import torch.distributed as dist
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        if self.deepspeed:  # each process holds its partition, in DeepSpeed's own format
            mine = _to_cpu(optimizer.optimizer.state_dict())
            everyone = [None] * self.world if self.accelerator.is_main_process else None
            dist.gather_object(mine, everyone, dst=0)
            return {"deepspeed": {"zero_stage": self.accelerator.state.deepspeed_plugin.zero_stage,
                                  "processes": self.world, "partitions": everyone}}
        return get_optimizer_state_dict(self.inner, optimizer.optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, saved: dict, optimizer, path) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        ds = saved.get("deepspeed") if isinstance(saved, dict) else None
        if ds is not None or self.deepspeed:
            if ds is None or not self.deepspeed:
                raise UserError(f"{path}: written {'under' if ds else 'without'} DeepSpeed; DeepSpeed keeps its "
                                f"own optimizer format, so resume it {'under the same' if ds else 'without a'} "
                                f"DeepSpeed config")
            if ds["processes"] != self.world:
                raise UserError(f"{path}: written by {ds['processes']} DeepSpeed processes; resume it with "
                                f"{ds['processes']} (this run has {self.world})")
            # every partition: DeepSpeed picks this process's own; the fp32 master weights come back too
            optimizer.optimizer.load_state_dict(ds["partitions"], load_optimizer_states=True, load_from_fp32_weights=True)
            return
        try:
            set_optimizer_state_dict(self.inner, optimizer.optimizer, saved,
                                     options=StateDictOptions(full_state_dict=self.fsdp))
        except (KeyError, ValueError, RuntimeError, TypeError, AttributeError, IndexError) as e:
            raise UserError(f"{path}: optimizer state does not fit this run's trainable parameters "
                            f"({type(e).__name__}: {e}); was it written with another method or model?") from None
