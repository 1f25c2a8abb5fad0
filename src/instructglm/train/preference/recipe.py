"""``train --stage dpo|orpo|simpo|kto``: the SFT recipe with pairs in place of rows and a preference loss.

Everything else is the SFT recipe's: methods, packing, data order, token-free exact resume, atomic
checkpoints, DDP/FSDP/DeepSpeed, the saved result (``infer``, ``merge``, ``export`` and ``serve``
take it like an SFT one). What changes: the rows are tokenized pairs (``tokenize`` of preference
data), a micro-batch's answers go through the model in one forward, the loss is averaged over pairs
(KTO: completions) of the whole step on all processes, and each log line adds the rewards of both
sides, the reward accuracy and margin, and the log-probs of both sides (``trainer_log.jsonl``,
TensorBoard).
"""

from __future__ import annotations

import copy
import functools
import logging
from dataclasses import dataclass, field

from instructglm.errors import UserError
from instructglm.train.preference.collate import PAIR, collate_sequences, sequence_count
from instructglm.train.preference.options import REFERENCE_FREE
from instructglm.train.recipe import SFTRecipe

log = logging.getLogger(__name__)

METRICS = ("rewards_chosen", "rewards_rejected", "logps_chosen", "logps_rejected")


@dataclass
class MetricWindow:
    """Sums (and counts) of the per-unit metrics since the last log line."""

    sums: dict = field(default_factory=dict)

    def add(self, out: dict) -> None:
        import torch

        def put(key, values):
            values = values.detach().float()
            ok = ~torch.isnan(values)
            s, n = self.sums.get(key, (0.0, 0))
            self.sums[key] = (s + float(values[ok].sum()), n + int(ok.sum()))

        for key in METRICS:
            put(key, out[key])
        chosen, rejected = out["rewards_chosen"], out["rewards_rejected"]
        if not torch.isnan(chosen).any() and not torch.isnan(rejected).any():  # pairs (not KTO)
            put("reward_accuracy", (chosen > rejected).float())
            put("reward_margin", chosen - rejected)

    def means(self, global_sum) -> dict:
        out = {}
        for key, (s, n) in self.sums.items():
            n = global_sum(n)
            if n:
                out[key] = global_sum(s) / n
        return out


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (another C library: nothing to do)."""
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Give the pages glibc keeps after a step's tensors are freed back to the system. A step frees
    thousands of activation-sized blocks, which glibc keeps resident; the next step's different
    lengths cannot reuse them all, so without this the resident set creeps up step after step and the
    peak stacks on top (Gemma 3 LoRA DPO: about 0.45 GB of the peak by step 3). Takes milliseconds."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def check_rows(manifest: dict, data, dataset: str, stage: str) -> None:
    """Refuse SFT rows for a preference stage, and KTO completions for a pair stage."""
    from instructglm.tokenize.pairs import is_preference_dataset

    if not is_preference_dataset(manifest):
        raise UserError(f"{dataset}: SFT rows; --stage {stage} trains on preference data (convert a file with "
                        f"chosen/rejected answers, then tokenize it)")
    if stage != "kto" and any(label != PAIR for label in data["label"]):
        raise UserError(f"{dataset}: holds KTO completions (one answer with a true/false label); --stage {stage} "
                        f"needs chosen/rejected pairs: use --stage kto")


class PreferenceRecipe(SFTRecipe):
    """One preference run: SFT's setup and loop, with the pieces above swapped in."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.stage, self.options = cfg.stage, cfg.preference
        self.kto = cfg.stage == "kto"
        self.metrics = MetricWindow()
        self.reference = None  # the model with adapters off ("adapter"), a frozen copy, or None
        self.reference_rows = self.eval_reference_rows = None  # precomputed reference log-probs, [rows, 2]

    def _setup_data(self) -> None:
        super()._setup_data()
        check_rows(self.manifest, self.data, self.cfg.dataset, self.stage)
        if self.eval_data is not None:
            check_rows(self.manifest, self.eval_data, self.cfg.eval.eval_dataset or self.cfg.dataset, self.stage)

    def _setup_model(self) -> None:
        """The policy as in SFT, then the reference: none for ORPO/SimPO, the adapters switched off for
        LoRA/P-Tuning, else a frozen copy of the weights before training (or precomputed log-probs)."""
        from instructglm.train.preference.forward import ADAPTER

        if (self.backend.zero3 and self.cfg.method in ("freeze", "full") and self.stage not in REFERENCE_FREE
                and not self.options.precompute_ref):
            # ZeRO-3 partitions the weights as they load: a copy of them is a copy of this process's
            # shard, which no engine gathers for its forward. Refused before the model loads.
            raise UserError(f"--stage {self.stage} --method {self.cfg.method} under DeepSpeed ZeRO-3: the frozen "
                            "reference cannot be a copy of partitioned weights; add --precompute-ref (reference "
                            "log-probs computed once before training) or use ZeRO-2 or FSDP")
        super()._setup_model()
        if self.cfg.dry_run:
            return
        if self.stage in REFERENCE_FREE:
            if self.options.precompute_ref:
                log.info("--stage %s uses no reference model; precompute_ref is ignored", self.stage)
            return
        adapters = hasattr(self.model, "disable_adapter")
        if self.options.precompute_ref:
            from instructglm.train.preference.reference import load_or_compute

            reference = ADAPTER if adapters else self.model
            self.reference_rows = load_or_compute(self, reference, self.data)
            if self.eval_data is not None:
                self.eval_reference_rows = load_or_compute(self, reference, self.eval_data)
        elif adapters:
            self.reference = ADAPTER
        else:  # before any step (resumed weights come later): the base weights
            self.reference = copy.deepcopy(self.model).requires_grad_(False).eval()

    def _loss_module(self):
        from instructglm.train.preference.forward import PreferenceForward

        reference = self.reference
        if reference is not None and reference != "adapter":
            reference.to(self.accelerator.device)
        return PreferenceForward(self.model, self.method, self.stage, self.options, reference)

    # ------------------------------------------------------------------ the loop's pieces

    def _batch(self, rows: list[int], data) -> dict:
        table = self.reference_rows if data is self.data else self.eval_reference_rows
        reference = table[rows] if table is not None else None
        return collate_sequences(data[rows], self.pad_id, self.pack_length, self.kto, reference)

    def _micro_batches(self, step: int) -> list[dict]:
        micro = []
        for k in range(self.plan.accumulation):
            rows = self.plan.micro_batch_rows(step, k, self.rank, self.cfg.seed, self.cfg.shuffle)
            if rows:
                micro.append(self._batch(rows, self.data))
        return micro

    def _units(self, batch: dict) -> int:
        return sequence_count(batch) // (1 if self.kto else 2)

    NAN_ADVICE = "lower the learning rate or beta"

    def _micro_loss(self, batch: dict):
        out = self.loss_fn(**batch)
        self.metrics.add(out)
        return out["losses"].sum()

    def _after_backward(self) -> None:
        release_free_memory()

    def _log_extras(self) -> dict:
        """The preference metrics of the log line (means since the last one)."""
        extras = {k: round(v, 6) for k, v in self.metrics.means(self.backend.global_sum).items()}
        self.metrics = MetricWindow()
        return extras

    def evaluate(self) -> float:
        """Mean loss per pair (KTO: completion) over the eval rows, without gradients."""
        import torch

        inner = self.backend.inner
        was_training = inner.training
        inner.eval()
        total, count = 0.0, 0
        size = self.cfg.schedule.per_device_train_batch_size
        with torch.no_grad():
            for start in range(0, len(self.eval_data), size):
                batch = self._batch(list(range(start, min(start + size, len(self.eval_data)))), self.eval_data)
                out = self.loss_fn(**{k: v.to(self.accelerator.device) for k, v in batch.items()})
                total += float(out["losses"].sum())
                count += int(out["losses"].numel())
        inner.train(was_training)
        return total / max(count, 1)


def recipe_class(cfg) -> type[SFTRecipe]:
    """The recipe of ``cfg.stage``: SFT and pt (continued pretraining, SFT's loop on plain-text rows), which
    refuse tokenized preference data, or the preference one. Rows of the wrong kind are one line here,
    before the model loads (a dataset that is not there is left to the data step to report)."""
    from pathlib import Path

    from instructglm.constants import MANIFEST
    from instructglm.tokenize import read_manifest
    from instructglm.tokenize.pairs import is_preference_dataset
    from instructglm.tokenize.pretrain import check_dataset_stage
    from instructglm.train.data import dataset_parts

    for spec in (cfg.dataset, cfg.eval.eval_dataset):
        for part in dataset_parts(spec) if spec else []:
            if not (Path(part) / MANIFEST).is_file():
                continue
            manifest = read_manifest(part)
            check_dataset_stage(cfg.stage, manifest, part)
            if cfg.stage in ("sft", "pt") and is_preference_dataset(manifest):
                raise UserError(f"{part}: tokenized preference pairs; SFT trains on instruction rows. Align with "
                                f"--stage dpo|orpo|simpo|kto, or tokenize SFT data")
    return SFTRecipe if cfg.stage in ("sft", "pt") else PreferenceRecipe
