"""``train``: the fine-tuning recipe, top to bottom.

Engine: a plain PyTorch loop on top of ``accelerate`` (device placement, mixed precision, and the
distributed back-ends) rather than ``transformers.Trainer``. The loop is short, and owning it buys
what the Trainer makes awkward: the loss on trained positions only (``loss.py``), token-weighted
gradient accumulation, checkpoints that are written atomically and hold only the trained weights
(``checkpoint.py``), and a resume that restores data position and RNG exactly.

:class:`SFTRecipe` builds one thing per ``_setup_*`` step, in order, and :meth:`SFTRecipe.train`
reads as the loop it runs. Output directory::

    OUT/adapter_model.safetensors, adapter_config.json   (what the method trained)
    OUT/instructglm.json      base model, template, method: what infer/merge need (runinfo.py)
    OUT/train_config.yaml     the fully resolved config
    OUT/run_identity.json     which run this is (identity.py; checked by --resume); OUT/.instructglm.lock (lock.py)
    OUT/trainer_log.jsonl     one line per logging step; OUT/loss.png; OUT/runs/ (TensorBoard)
    OUT/checkpoint-N/         every save_steps, with optimizer/scheduler/RNG state and a .complete marker
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

from instructglm.config import to_yaml
from instructglm.constants import TRAIN_CONFIG
from instructglm.errors import UserError
from instructglm.train import checkpoint, data
from instructglm.train.logs import LogWindow, TrainingLog
from instructglm.train.oom import out_of_memory_message
from instructglm.train.options import TrainConfig
from instructglm.train.signals import StopRequest
from instructglm.train.steps import StepPlan

log = logging.getLogger(__name__)


def train(cfg: TrainConfig) -> dict | None:
    """Fine-tune ``cfg.model`` on ``cfg.dataset``; return a summary with the logged losses (None for a
    dry run, which prints what it checked).

    SIGTERM or SIGINT during the loop finishes the current step, saves a checkpoint and stops (see
    :class:`StopRequest`); the previous signal handlers are restored however ``train`` ends.
    """
    from instructglm.train.preference.recipe import recipe_class  # --stage dpo|orpo|simpo|kto: train/preference/
    recipe = recipe_class(cfg)(cfg)
    try:
        recipe.setup()
        return recipe.train()
    finally:
        recipe.cleanup()


class SFTRecipe:
    """One training run: :meth:`setup`, :meth:`train`, :meth:`cleanup` (always)."""

    def __init__(self, cfg: TrainConfig):
        from instructglm.train.methods import get_method

        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir)
        self.method = get_method(cfg.method)
        self.stop = StopRequest()
        self.state = checkpoint.TrainerState()
        self.window = LogWindow()
        self.log: TrainingLog | None = None
        self.bar = None
        self.identity: dict | None = None
        self.lock = None  # the output directory's lock (train/lock.py), held by the main process

    # ------------------------------------------------------------------ setup, in order

    def setup(self) -> None:
        """Everything that can be wrong with the inputs is checked before the model loads."""
        self._setup_resume_path()
        self._setup_tokenizer()
        self._setup_data()
        self._setup_backend()
        self._setup_run_dir()
        self._setup_model()
        if self.cfg.dry_run:
            return
        self._setup_resumed_weights()
        self._setup_optimizer()
        self._setup_resume_state()
        self._setup_logging()

    def _setup_resume_path(self) -> None:
        """Depends on nothing: the checkpoint ``--resume`` names, found and checked whole first so a wrong
        or damaged one fails fast."""
        self.resume_from = checkpoint.resolve_resume(self.cfg.checkpoints.resume, self.output_dir)
        if self.resume_from is not None:
            checkpoint.check_checkpoint(self.resume_from, self.cfg.method)

    def _setup_tokenizer(self) -> None:
        """Depends on nothing: the base model's files (an embedded or GGUF model is prepared once) and
        its tokenizer. The data is tokenized already, so unless the vocabulary is extended the
        tokenizer is a deferred one (models/deferred.py): fingerprint, pad id and size without the
        seconds a large vocabulary takes to load; anything else asked of it loads it."""
        from instructglm.models.loading import load_tokenizer, load_tokenizer_deferred, resolve_model
        from instructglm.train.vocab import check_method, extended_tokenizer

        cfg = self.cfg
        check_method(cfg.method, cfg.tokenizer, cfg.add_tokens)
        self.model_path = resolve_model(cfg.model)
        load = load_tokenizer if cfg.tokenizer or cfg.add_tokens else load_tokenizer_deferred
        self.base_tokenizer = load(self.model_path, trust_remote_code=cfg.trust_remote_code)
        self.tokenizer = extended_tokenizer(self.base_tokenizer, cfg.tokenizer, cfg.add_tokens, cfg.trust_remote_code)
        self.pad_id = self.tokenizer.pad_token_id

    def _setup_data(self) -> None:
        """Depends on the tokenizer: every dataset's manifest must name it; then the rows, split for eval."""
        import datasets

        cfg = self.cfg
        parts = data.dataset_parts(cfg.dataset)
        self.manifest = data.check_parts(parts, cfg.model, self.tokenizer)
        if cfg.eval.eval_dataset:
            data.check_dataset(cfg.eval.eval_dataset, cfg.model, self.tokenizer)
        rows = datasets.concatenate_datasets([datasets.load_from_disk(d) for d in parts])
        self.data, self.eval_data = data.split_eval(rows, cfg.eval.val_size, cfg.eval.eval_dataset, cfg.seed)
        if len(self.data) == 0:
            raise UserError(f"{cfg.dataset}: the dataset is empty")
        packing = cfg.performance.packing and not self.method.USES_MODEL_FORWARD
        self.pack_length = cfg.performance.pack_length if packing else None

    def _setup_backend(self) -> None:
        """Depends on the config only, and comes before the model: one process, DDP, FSDP or DeepSpeed,
        whatever the launcher set up (under ZeRO-3 transformers partitions the weights as they load)."""
        from instructglm.train.distributed import DistributedBackend
        from instructglm.train.model import resolve_precision

        self.dtype, mixed = resolve_precision(self.cfg.performance.precision)
        self.backend = DistributedBackend(mixed)
        self.backend.check(self.cfg, self.method)
        self.accelerator = accelerator = self.backend.accelerator
        self.world, self.rank, self.main = (accelerator.num_processes, accelerator.process_index,
                                            accelerator.is_main_process)

    def _setup_run_dir(self) -> None:
        """Depends on the data (its fingerprint) and the backend (the main process locks): the output
        directory is this run's alone, and a resume continues the run that wrote its checkpoint."""
        from instructglm.train.identity import claim_output_dir

        self.identity, self.lock = claim_output_dir(self.cfg, self.resume_from, self.main and not self.cfg.dry_run)

    def _setup_model(self) -> None:
        """Depends on the backend: base weights (frozen, maybe low precision) with kernels and
        checkpointing, then the method's trainable weights in fp32."""
        from accelerate.utils import set_seed

        from instructglm.train.kernels import apply_liger
        from instructglm.train.model import load_base, numel
        from instructglm.train.norms import fuse_rms_norms
        from instructglm.train.vocab import extend_model

        cfg = self.cfg
        set_seed(cfg.seed)
        base = load_base(self.model_path, self.dtype, cfg.load_in, cfg.trust_remote_code)
        extend_model(base, self.base_tokenizer, self.tokenizer)  # --tokenizer / --add-tokens: resized, marked
        if not apply_liger(base, cfg.performance.liger):  # Liger has its own RMSNorm kernel
            fuse_rms_norms(base)  # one autograd node per RMSNorm in bf16; fp32 keeps the model's own forward
        if cfg.performance.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.enable_input_require_grads()  # so checkpointed blocks see a grad-requiring input under PEFT
        self.model = self.method.apply(base, cfg.method_options)
        if cfg.method == "lora" and not (self.backend.fsdp or self.backend.deepspeed):
            from instructglm.train.methods.lora.fused import fuse_lora_layers

            fuse_lora_layers(self.model)  # one autograd node per adapted linear in bf16; fp32 keeps PEFT's forward
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not self.backend.deepspeed:  # DeepSpeed keeps its own fp32 master copy (ZeRO-3 partitioned the weights)
            for p in self.trainable:
                p.data = p.data.float()
        self.n_trainable = sum(numel(p) for p in self.trainable)
        self.n_total = sum(numel(p) for p in self.model.parameters())
        log.info("model %s, method %s: %s trainable of %s parameters (%.2f%%)", cfg.model, cfg.method,
                 f"{self.n_trainable:,}", f"{self.n_total:,}", 100 * self.n_trainable / self.n_total)
        self.model.train()

    def _setup_resumed_weights(self) -> None:
        """Depends on the model and the resume path: trained weights go in before the backend shards them
        (the optimizer state comes after, in :meth:`_setup_resume_state`)."""
        if self.resume_from is not None:
            checkpoint.load_trained_weights(self.resume_from, self.model, self.method, self.backend.zero3)

    def _setup_optimizer(self) -> None:
        """Depends on the model (trainable weights) and the backend (processes, hence steps): AdamW, the
        learning-rate schedule, then the loss module and optimizer prepared by the backend."""
        import torch
        from transformers import get_scheduler

        from instructglm.train.model import training_flops_per_token

        cfg, schedule = self.cfg, self.cfg.schedule
        self.plan = StepPlan(schedule.per_device_train_batch_size, schedule.gradient_accumulation_steps,
                             self.world, len(self.data), schedule.max_steps, schedule.num_epochs)
        opt = cfg.optimizer
        # Fused AdamW: one kernel over all tensors. On CPU it is 2-3x faster than the per-tensor loop
        # PyTorch picks there (LoRA's 252 tensors on Gemma 3 270M: 5 ms instead of 12-14 ms a step),
        # with the same updates to 1e-10. FSDP's sharded parameters keep the default.
        optimizer = torch.optim.AdamW(self.trainable, lr=opt.learning_rate, weight_decay=opt.weight_decay,
                                      fused=torch.cuda.is_available() or not self.backend.fsdp)
        self.scheduler = get_scheduler(opt.lr_scheduler if opt.lr_scheduler != "constant" else "constant_with_warmup",
                                       optimizer, num_warmup_steps=opt.warmup_steps,
                                       num_training_steps=self.plan.total_steps)
        self.flops_per_token = training_flops_per_token(self.model, cfg.method)
        self.loss_fn, self.optimizer = self.backend.prepare(self._loss_module(), optimizer)
        if cfg.performance.compile:
            self.loss_fn = torch.compile(self.loss_fn)

    def _loss_module(self):  # the module the backend wraps, its loss inside forward (a subclass's hook)
        from instructglm.train.loss import LossForward
        return LossForward(self.model, self.method)

    def _setup_resume_state(self) -> None:
        """Depends on the prepared optimizer and the scheduler: their state, the RNG, step and logs."""
        if self.resume_from is not None:
            self.state = checkpoint.load_training_state(self.resume_from, self.backend, self.optimizer,
                                                        self.scheduler)
            log.info("resumed from %s at step %d", self.resume_from, self.state.step)

    def _setup_logging(self) -> None:
        """Depends on the resume state (the log continues from it): the output directory, the resolved
        config, the log files and the one summary line."""
        from instructglm.files import atomic_file
        from instructglm.train.identity import write_identity

        if self.main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with atomic_file(self.output_dir / TRAIN_CONFIG) as f:
                f.write(to_yaml(self.cfg))
            write_identity(self.output_dir, self.identity)
        self.log = TrainingLog(self.output_dir, self.state.logs, self.main)
        if self.main:  # printed even with -q: the number people most often get wrong when scaling out
            schedule, plan = self.cfg.schedule, self.plan
            print(f"{len(self.data)} rows, {plan.total_steps} steps ({plan.steps_per_epoch} per epoch); effective "
                  f"batch {plan.global_batch * plan.accumulation} = {schedule.per_device_train_batch_size} per "
                  f"device x {plan.accumulation} accumulation x {self.world} process(es), {self.backend.describe()}"
                  + (f", {len(self.eval_data)} eval rows" if self.eval_data is not None else ""),
                  file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ the loop

    def train(self) -> dict:
        if self.cfg.dry_run:
            return self._dry_run()
        from tqdm.auto import tqdm

        total = self.plan.total_steps
        self.bar = tqdm(total=total, initial=self.state.step, desc="train", unit="step",
                        disable=None if self.main else True)
        self.stop.install()
        while self.state.step < total:
            micro = self._micro_batches(self.state.step)
            started = time.perf_counter()
            loss_sum, tokens = self._loss_step(micro)
            grad_norm = self._optimizer_step()
            self.state.step += 1
            seconds = time.perf_counter() - started
            seen = self.backend.global_sum(sum(int(b["attention_mask"].sum()) for b in micro))
            self.window.add(loss_sum, tokens, seen, seconds)
            self.bar.update(1)
            self._maybe_log(grad_norm)
            self._maybe_eval()
            self._maybe_checkpoint()
            if self._stop_requested():
                return self._stopped()
        self.bar.close()
        return self._finish()

    def _micro_batches(self, step: int) -> list[dict]:
        """This process's micro-batches of optimizer step ``step`` (0-based), on the CPU."""
        micro = []
        for k in range(self.plan.accumulation):
            rows = self.plan.micro_batch_rows(step, k, self.rank, self.cfg.seed, self.cfg.shuffle)
            if rows:
                micro.append(data.make_batch(self.data[rows], self.pad_id, self.pack_length))
        return micro

    def _loss_step(self, micro: list[dict]) -> tuple[float, int]:
        """Forward and backward over the step's micro-batches; (loss sum, units) over all processes.

        Weighted by units (trained tokens; the preference stages: pairs) over the whole step on all
        processes: each process scales its loss sum by world / global units, and DDP's gradient
        averaging divides by world again."""
        import torch

        step = self.state.step + 1
        units = self.backend.global_sum(sum(self._units(b) for b in micro))
        step_loss = 0.0
        try:
            for i, batch in enumerate(micro):
                batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
                with self.accelerator.autocast():
                    loss_sum = self._micro_loss(batch)
                self.backend.backward(loss_sum * self.world / max(units, 1), last=i == len(micro) - 1)
                step_loss += float(loss_sum.detach())
        except torch.OutOfMemoryError as e:
            raise UserError(out_of_memory_message(self.cfg, step, e)) from None
        self._after_backward()
        step_loss = self.backend.global_sum(step_loss)
        if not math.isfinite(step_loss) and self.cfg.checkpoints.stop_on_nan:
            raise UserError(f"step {step}: the loss is {step_loss} (not finite); {self.NAN_ADVICE}, "
                            f"check the data, or resume from the last checkpoint in {self.output_dir}")
        return step_loss, units

    # A subclass's hooks (train/preference/): what the loss is averaged over, a micro-batch's loss sum,
    # what follows the backward passes, the advice on a non-finite loss.
    NAN_ADVICE = "lower the learning rate"

    def _units(self, batch: dict) -> int:
        return data.trained_tokens(batch)

    def _micro_loss(self, batch: dict):
        return self.loss_fn(**batch)[0]

    def _after_backward(self) -> None:
        pass

    def _optimizer_step(self) -> float:
        """Clip, step, advance the schedule; returns the gradient norm before clipping."""
        grad_norm = self.backend.grad_norm(self.cfg.optimizer.max_grad_norm)
        self.optimizer.step()  # a no-op under DeepSpeed, whose engine stepped in backward
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _maybe_log(self, grad_norm: float) -> None:
        import torch

        step, total = self.state.step, self.plan.total_steps
        if step % self.cfg.checkpoints.logging_steps and step != total:
            return
        record = {"step": step, "epoch": round(step / self.plan.steps_per_epoch, 3), "loss": self.window.loss,
                  "lr": self.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                  "tokens_per_s": self.window.tokens_per_s}
        if torch.cuda.is_available():  # throughput against the GPU's dense bf16 peak, and memory
            from instructglm.train.model import gpu_record
            record.update(gpu_record(record["tokens_per_s"] / self.world, self.flops_per_token))
        record.update(self._log_extras())
        self.log.write(record)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
        if self.bar.disable:  # no terminal: a plain log line instead of the progress bar
            log.info("step %d/%d  loss %.4f  lr %.2e  grad_norm %.2f  %.0f tokens/s", step, total,
                     record["loss"], record["lr"], record["grad_norm"], record["tokens_per_s"])
        self.window = LogWindow()

    def _log_extras(self) -> dict:
        return {}  # more values for the log line: a subclass's hook (the preference stages add rewards)

    def _maybe_eval(self) -> None:
        step, every = self.state.step, self.cfg.eval.eval_steps
        if self.eval_data is None or not ((every and step % every == 0) or step == self.plan.total_steps):
            return
        value = self.evaluate()
        self.log.write({"step": step, "eval_loss": value})
        log.info("step %d  eval loss %.4f", step, value)

    def _maybe_checkpoint(self) -> None:
        if self._checkpoint_due() and self.state.step < self.plan.total_steps:
            self.save_checkpoint()

    def _checkpoint_due(self) -> bool:
        every = self.cfg.checkpoints.save_steps
        return every > 0 and self.state.step % every == 0

    def _stop_requested(self) -> bool:
        """SIGTERM/SIGINT on any process: save (unless this step just did), then stop."""
        if self.state.step >= self.plan.total_steps or not self.stop.requested(self.backend.global_sum):
            return False
        if not self._checkpoint_due():
            self.save_checkpoint()
        return True

    # ------------------------------------------------------------------ evaluation, saving, the end

    def evaluate(self) -> float:
        """Token-mean loss over the whole eval set, without gradients. The prepared loss module is
        called (under FSDP only its forward gathers the weights)."""
        import torch

        inner = self.backend.inner
        was_training = inner.training
        inner.eval()
        total, count = 0.0, 0
        size = self.cfg.schedule.per_device_train_batch_size
        with torch.no_grad():
            for start in range(0, len(self.eval_data), size):
                batch = data.make_batch(self.eval_data[start:start + size], self.pad_id, self.pack_length)
                batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
                loss_sum, n = self.loss_fn(**batch)
                total += float(loss_sum)
                count += n
        inner.train(was_training)
        return total / max(count, 1)

    def save_checkpoint(self) -> None:
        """Every process gathers (collective under FSDP); the main one writes ``checkpoint-STEP``."""
        weights, optim = self.backend.trained_state(), self.backend.optimizer_state(self.optimizer)
        if self.main:
            checkpoint.save_checkpoint(self.output_dir, self.state.step, self.model, self.method, weights, optim,
                                       self.scheduler, self.state, self.cfg.checkpoints.save_total_limit,
                                       self.identity)
        self.accelerator.wait_for_everyone()

    def _result(self) -> dict:
        return {"output_dir": str(self.output_dir), "steps": self.state.step, "logs": self.log.losses(),
                "eval": self.log.eval_losses(), "trainable_parameters": self.n_trainable}

    def _dry_run(self) -> None:
        """Say what was checked; None, so the CLI prints no 'trained' line (nothing was)."""
        print(to_yaml(self.cfg), end="")
        share = 100 * self.n_trainable / self.n_total
        print(f"# trainable parameters: {self.n_trainable:,} of {self.n_total:,} ({share:.3f}%)")
        schedule = self.cfg.schedule
        plan = StepPlan(schedule.per_device_train_batch_size, schedule.gradient_accumulation_steps, self.world,
                        len(self.data), schedule.max_steps, schedule.num_epochs)
        resume = f", resuming {self.resume_from} (checked)" if self.resume_from is not None else ""
        print(f"dry run: config, {len(self.data)} rows and the model checked ({plan.total_steps} steps planned"
              f"{resume}); nothing trained, nothing written to {self.output_dir}")

    def _stopped(self) -> dict:
        """Stopped by a signal: the checkpoint is the result, not final weights."""
        self.bar.close()
        self.log.close()
        step = self.state.step
        return self.stop.finish(self.output_dir / f"checkpoint-{step}", step, self.plan.total_steps, self.main,
                                self._result())

    def _finish(self) -> dict:
        """The trained weights and what later stages need to use them (``instructglm.json``)."""
        from instructglm.models.adapters import base_signature
        from instructglm.runinfo import RunInfo, recorded_base
        from instructglm.train.vocab import is_extended, save_tokenizer

        weights = self.backend.trained_state()
        if self.main:
            self.method.save(self.model, self.output_dir, weights)
            if is_extended(self.base_tokenizer, self.tokenizer):  # infer/serve/merge read it from here
                save_tokenizer(self.tokenizer, self.output_dir)
            RunInfo(base_model=recorded_base(self.cfg.model), method=self.cfg.method,
                    template=self.manifest["template"], tokenizer=self.manifest["tokenizer"],
                    dataset=str(self.cfg.dataset), steps=self.state.step, processes=self.world,
                    base_config=base_signature(self.model.config)).save(self.output_dir)
        self.log.close()
        self.accelerator.wait_for_everyone()
        return self._result()

    def cleanup(self) -> None:
        """Put the previous signal handlers back and unlock the output directory (whatever happened)."""
        self.stop.restore()
        if self.lock is not None:
            self.lock.release()

