"""A thin training loop with callbacks: one code path for one process, DDP on CPU (gloo) or GPUs (NCCL).

The loop owns what must be exact for resuming: the optimiser step count, the sampler position within
the epoch and every RNG state, all stored in atomic, pickle-free checkpoints. Everything else
(logging, early stopping, custom reporting) hooks in through :class:`Callback`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Sequence, Sized
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from medcore.engine.amp import (
    Precision,
    choose_precision,
    full_precision,
    make_scaler,
    maybe_compile,
    use_channels_last,
)
from medcore.engine.checkpoint import load_checkpoint, save_checkpoint
from medcore.engine.distributed import (
    DistContext,
    ShardedBatchSampler,
    all_gather_bytes,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    broadcast_flag,
)
from medcore.engine.history import MetricsHistory
from medcore.engine.optim import build_optimizer
from medcore.engine.schedulers import build_schedule, set_learning_rate
from medcore.utils.atomic import atomic_write_text

Evaluator = Callable[[nn.Module, DistContext, Precision], dict[str, float]]


@dataclasses.dataclass
class TrainerConfig:
    """Loop settings; every field is JSON and is stored in each checkpoint and the run summary."""

    max_epochs: int = 10
    batch_size: int = 2                       # per process
    samples_per_epoch: int | None = None      # global samples per epoch (default: dataset size)
    val_every: int = 1                        # validate every k epochs (and after the last)
    checkpoint_every_steps: int = 0           # 0: only at the end of each epoch
    grad_clip: float | None = 12.0
    seed: int = 0
    num_workers: int = 0
    optimizer: dict = dataclasses.field(default_factory=lambda: {"name": "adamw", "lr": 1e-3})
    schedule: dict = dataclasses.field(default_factory=lambda: {"kind": "poly"})
    monitor: str = "val_dice_mean"
    monitor_mode: str = "max"
    early_stopping_patience: int | None = None  # validations without improvement before stopping
    amp: str = "auto"
    compile: bool = False
    channels_last: bool = True
    max_train_seconds: float | None = None     # a time budget: the epoch count and the lr schedule follow the
                                               # measured step time, and training stops (mid-epoch if need
                                               # be) so that the last validation ends about on the budget
    progress: bool = True
    keys: tuple[str, str] = ("image", "label")

    @classmethod
    def from_dict(cls, values: dict) -> TrainerConfig:
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(f"training config has unknown field(s) {unknown}; allowed: {sorted(allowed)}")
        values = dict(values)
        if "keys" in values:
            values["keys"] = tuple(values["keys"])
        return cls(**values)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["keys"] = list(self.keys)
        return d


class Callback:
    """Hooks called by :class:`Trainer` on every rank; use ``trainer.ctx.is_main`` to write."""

    def on_train_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer, loss: float) -> None: ...
    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...
    def on_epoch_end(self, trainer: Trainer, record: dict) -> None: ...
    def on_checkpoint(self, trainer: Trainer, path: Path) -> None: ...
    def on_train_end(self, trainer: Trainer, summary: dict) -> None: ...


def default_collate(batch: list[dict]) -> dict:
    return torch.utils.data.default_collate(batch)


def _rng_state(ctx: DistContext) -> dict:
    """Every RNG state the loop touches; the torch CPU state is gathered from all ranks."""
    cpu = torch.get_rng_state()
    state: dict[str, Any] = {"torch_cpu": all_gather_bytes(cpu, ctx), "numpy": np.random.get_state(),
                             "python": random.getstate()}
    if ctx.device.startswith("cuda"):
        state["torch_cuda"] = all_gather_bytes(torch.cuda.get_rng_state(), ctx)
    return state


def _restore_rng(state: dict, ctx: DistContext) -> None:
    per_rank = state["torch_cpu"]
    torch.set_rng_state(per_rank[ctx.rank] if len(per_rank) == ctx.world_size else per_rank[0])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if ctx.device.startswith("cuda") and "torch_cuda" in state:
        cuda = state["torch_cuda"]
        torch.cuda.set_rng_state(cuda[ctx.rank] if len(cuda) == ctx.world_size else cuda[0])


class Trainer:
    """Train ``model`` with ``loss_fn`` on ``train_data`` (indexable by sampler keys) into ``run_dir``.

    ``train_data[(epoch, position, index)]`` must return a dict with ``config.keys`` tensors
    (see :class:`medcore.engine.data.EpochDataset`). ``evaluator(model, ctx, precision)`` returns
    validation metrics already reduced over ranks (names should start with ``val_``).
    Files (rank 0 only): ``checkpoints/last.safetensors``, ``checkpoints/best.safetensors``,
    ``history.csv``, ``history.json``, ``curves.png``, ``summary.json``.
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, train_data: torch.utils.data.Dataset,
                 run_dir: str | Path, config: TrainerConfig | None = None, evaluator: Evaluator | None = None,
                 callbacks: Sequence[Callback] = (), ctx: DistContext | None = None,
                 collate: Callable[[list], Any] = default_collate) -> None:
        self.config = config or TrainerConfig()
        self.ctx = ctx or DistContext()
        self.run_dir = Path(run_dir)
        self.callbacks = list(callbacks)
        self.evaluator, self.collate, self.loss_fn = evaluator, collate, loss_fn
        cfg = self.config
        torch.manual_seed(cfg.seed + self.ctx.rank)  # independent dropout draws per rank
        self.precision = choose_precision(self.ctx.device, cfg.amp)
        self.model = model.to(self.ctx.device)
        self.channels_last = cfg.channels_last and use_channels_last(self.model, self.ctx.device)
        self.optimizer = build_optimizer(cfg.optimizer, self.model.parameters())
        self.scaler = make_scaler(self.precision)
        n_train = len(cast(Sized, train_data))
        self.sampler = ShardedBatchSampler(n_train, cfg.batch_size, self.ctx.rank, self.ctx.world_size,
                                           seed=cfg.seed, samples_per_epoch=cfg.samples_per_epoch)
        self.steps_per_epoch = len(self.sampler)
        self.schedule = build_schedule(cfg.schedule, total_steps=cfg.max_epochs * self.steps_per_epoch)
        self.loader = torch.utils.data.DataLoader(
            train_data, batch_sampler=self.sampler, num_workers=cfg.num_workers, collate_fn=collate,
            pin_memory=self.ctx.device.startswith("cuda"), persistent_workers=cfg.num_workers > 0,
            # a private generator: the loader's per-epoch worker seed must not consume the global RNG
            # (that would shift dropout masks after a mid-epoch resume); samples use EpochDataset's rng
            generator=torch.Generator().manual_seed(cfg.seed))
        self.train_model = self._wrap(self.model)
        self.history = MetricsHistory()
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.max_epochs = cfg.max_epochs  # under a time budget, re-planned from the clock after every epoch
        # the lr schedule's position (in steps) and its advance per step: 1 without a budget (the schedule
        # follows steps alone, so resumes are bit-identical); under a budget, set so that it anneals fully
        # when the budget's time is spent, at the step time measured so far
        self.schedule_position = 0.0
        self.schedule_rate = 1.0
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.bad_validations = 0
        self.epoch_totals = [0.0, 0.0, 0.0, 0.0]
        self.stop_reason: str | None = None
        self._started = time.perf_counter()
        self._deadline = cfg.max_train_seconds  # when training stops: the budget less the last validation's time
        self._clock = (self._started, 0, 0.0)  # (time, global_step, validation seconds) at the last re-plan
        self._val_seconds = 0.0  # spent validating in this process
        self._last_val_seconds = 0.0
        self.checkpoint_dir = self.run_dir / "checkpoints"

    # ------------------------------------------------------------------ set-up helpers
    def _wrap(self, model: nn.Module) -> nn.Module:
        model = maybe_compile(model, self.config.compile)
        if self.ctx.is_distributed:
            ids = [torch.device(self.ctx.device).index] if self.ctx.device.startswith("cuda") else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return model

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        """The complete training state (called on every rank: RNG states are gathered)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "schedule": {"config": self.schedule.config(), "step": self.global_step,
                         "position": self.schedule_position, "rate": self.schedule_rate, "max_epochs": self.max_epochs},
            "rng": _rng_state(self.ctx),
            "progress": {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                         "global_step": self.global_step, "world_size": self.ctx.world_size,
                         "steps_per_epoch": self.steps_per_epoch, "epoch_totals": list(self.epoch_totals)},
            "best": {"score": self.best_score, "epoch": self.best_epoch, "bad_validations": self.bad_validations},
            "history": self.history.records,
            "config": self.config.to_dict(),
        }

    def save(self, name: str = "last.safetensors") -> Path | None:
        """Write a checkpoint (rank 0); every rank must call this (RNG states are gathered)."""
        state = self.state()
        path = None
        if self.ctx.is_main:
            path = save_checkpoint(state, self.checkpoint_dir / name)
            for cb in self.callbacks:
                cb.on_checkpoint(self, path)
        return path

    def load(self, path: str | Path) -> None:
        """Restore everything from a checkpoint written by :meth:`save` (on every rank)."""
        state = load_checkpoint(path)
        progress = state["progress"]
        if progress["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(f"checkpoint {path} was written with {progress['steps_per_epoch']} steps per epoch "
                             f"(world size {progress['world_size']}), this run has {self.steps_per_epoch}; resume "
                             "with the same batch size, world size and samples_per_epoch")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        _restore_rng(state["rng"], self.ctx)
        self.epoch, self.step_in_epoch = progress["epoch"], progress["step_in_epoch"]
        self.global_step = progress["global_step"]
        schedule = state["schedule"]
        self.schedule_position = float(schedule.get("position", self.global_step + schedule.get("offset", 0)))
        self.schedule_rate = float(schedule.get("rate", 1.0))
        if self.config.max_train_seconds is not None:  # the re-planned count; else the config's (may be raised)
            self.max_epochs = int(schedule.get("max_epochs", self.config.max_epochs))
        self.epoch_totals = [float(v) for v in progress["epoch_totals"]]
        best = state["best"]
        self.best_score, self.best_epoch, self.bad_validations = best["score"], best["epoch"], best["bad_validations"]
        self.history = MetricsHistory(state["history"])

    def resume_if_possible(self) -> bool:
        """Load ``checkpoints/last.safetensors`` if it exists; True when resumed."""
        path = self.checkpoint_dir / "last.safetensors"
        if self.ctx.is_main and self.checkpoint_dir.is_dir():
            for stale in self.checkpoint_dir.glob(".*.tmp"):  # left by a kill during a write
                stale.unlink(missing_ok=True)
        if not path.is_file():
            return False
        self.load(path)
        return True

    # ------------------------------------------------------------------ the loop
    def _improved(self, score: float) -> bool:
        if not math.isfinite(score):
            return False
        if self.best_score is None:
            return True
        return score > self.best_score if self.config.monitor_mode == "max" else score < self.best_score

    def _train_step(self, batch: dict) -> torch.Tensor:
        image_key, label_key = self.config.keys
        x = batch[image_key].to(self.ctx.device, non_blocking=True)
        y = batch[label_key].to(self.ctx.device, non_blocking=True)
        if self.channels_last and x.ndim == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        set_learning_rate(self.optimizer, self.schedule, int(self.schedule_position))
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            out = self.train_model(x)
        loss = self.loss_fn(full_precision(out), y)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule_position += self.schedule_rate
        return loss.detach()

    def _follow_the_clock(self) -> None:
        """Under a time budget, re-plan the rest of the run from the clock (agreed over ranks): the training
        step time measured since the last re-plan (the calibration's plan before the first epoch), the
        share of time validations take and the last validation's length give the steps left; the epoch
        count and the lr schedule's rate then fit them, so the schedule anneals fully and the run ends on
        the budget whether the machine turns out faster or slower than it was at the start. Called after
        every epoch and four times within one."""
        cfg = self.config
        if cfg.max_train_seconds is None:
            return
        now = time.perf_counter()
        t0, step0, val0 = self._clock
        steps = self.global_step - step0
        measured = (now - t0 - (self._val_seconds - val0)) / steps if steps else 0.0
        agreed = all_reduce_mean(torch.tensor([now - self._started, measured, self._val_seconds,
                                               self._last_val_seconds], dtype=torch.float64), self.ctx)
        elapsed, per_step, val_total, last_val = agreed.tolist()
        if per_step <= 0:  # nothing measured yet: the calibration's plan
            per_step = max(cfg.max_train_seconds, 1e-3) / max(1, cfg.max_epochs * self.steps_per_epoch)
        self._clock = (now, self.global_step, self._val_seconds)
        val_share = min(0.5, val_total / elapsed) if elapsed > 0 else 0.0
        self._deadline = max(0.0, cfg.max_train_seconds - last_val)
        steps_left = max(1.0, (self._deadline - elapsed) * (1.0 - val_share) / per_step)
        self.schedule_rate = max(0.0, (self.schedule.total_steps - self.schedule_position) / steps_left)
        self.max_epochs = self.epoch + max(1, math.ceil((self.step_in_epoch + steps_left) / self.steps_per_epoch))

    def _out_of_time(self) -> bool:
        """True (on every rank) once the training time of this process reaches the re-planned deadline."""
        if self._deadline is None:
            return False
        return broadcast_flag(time.perf_counter() - self._started > self._deadline, self.ctx)

    def _run_epoch(self) -> dict:
        cfg = self.config
        self.train_model.train()
        self.sampler.set_epoch(self.epoch, self.step_in_epoch)
        if self.step_in_epoch == 0:
            self.epoch_totals = [0.0, 0.0, 0.0, 0.0]  # loss sum, steps, data-wait s, compute s
        total = torch.tensor(self.epoch_totals[:2], dtype=torch.float64)
        wait, compute = self.epoch_totals[2], self.epoch_totals[3]
        bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch, desc=f"epoch {self.epoch}",
                   disable=not (cfg.progress and self.ctx.is_main), leave=False, dynamic_ncols=True)
        tick = time.perf_counter()
        for batch in self.loader:
            got = time.perf_counter()
            wait += got - tick
            loss = self._train_step(batch)
            value = float(loss)  # synchronises, so compute time is real
            total += torch.tensor([value, 1.0], dtype=torch.float64)
            self.global_step += 1
            self.step_in_epoch += 1
            tick = time.perf_counter()
            compute += tick - got
            self.epoch_totals = [total[0].item(), total[1].item(), wait, compute]
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}", refresh=False)
            for cb in self.callbacks:
                cb.on_step_end(self, value)
            if cfg.checkpoint_every_steps and self.global_step % cfg.checkpoint_every_steps == 0:
                self.save()
            if self._out_of_time():
                break
            quarter = max(1, self.steps_per_epoch // 4)
            if self.step_in_epoch % quarter == 0 and self.step_in_epoch < self.steps_per_epoch:
                self._follow_the_clock()  # four times an epoch: the schedule keeps pace within long epochs
            tick = time.perf_counter()
        bar.close()
        steps_here = max(1.0, total[1].item())
        total = all_reduce_sum(total, self.ctx)
        step_time = (wait + compute) / steps_here
        return {"train_loss": total[0].item() / max(1.0, total[1].item()),
                "lr": self.optimizer.param_groups[0]["lr"],
                "samples_per_s": cfg.batch_size * self.ctx.world_size / step_time if step_time > 0 else float("nan"),
                "data_wait_fraction": wait / (wait + compute) if wait + compute > 0 else 0.0}

    def validate(self) -> dict[str, float]:
        """Run the evaluator on the bare model in eval mode (every rank takes part)."""
        if self.evaluator is None:
            return {}
        started = time.perf_counter()
        self.model.eval()
        with torch.inference_mode():
            metrics = self.evaluator(self.model, self.ctx, self.precision)
        self.model.train()
        self._last_val_seconds = time.perf_counter() - started
        self._val_seconds += self._last_val_seconds
        return {k: float(v) for k, v in metrics.items()}

    def fit(self, resume: bool = True) -> dict:
        """Train until ``max_epochs``, early stopping or the time budget; return the summary dict."""
        cfg = self.config
        resumed = self.resume_if_possible() if resume else False
        for cb in self.callbacks:
            cb.on_train_start(self)
        self._started = time.perf_counter()
        self._clock = (self._started, self.global_step, self._val_seconds)
        self._follow_the_clock()
        while self.epoch < self.max_epochs and self.stop_reason is None:
            epoch_started = time.perf_counter()
            record: dict[str, Any] = {"epoch": self.epoch, **self._run_epoch()}
            last_epoch = self.epoch + 1 >= self.max_epochs
            over_time = self._out_of_time()
            if self.evaluator is not None and ((self.epoch + 1) % cfg.val_every == 0 or last_epoch or over_time):
                metrics = self.validate()
                record.update(metrics)
                for cb in self.callbacks:
                    cb.on_validation_end(self, metrics)
                score = metrics.get(cfg.monitor, float("nan"))
                if self._improved(score):
                    self.best_score, self.best_epoch, self.bad_validations = score, self.epoch, 0
                    improved = True
                else:
                    self.bad_validations += 1
                    improved = False
                patience = cfg.early_stopping_patience
                if broadcast_flag(patience is not None and self.bad_validations >= patience, self.ctx):
                    self.stop_reason = f"early stopping: no {cfg.monitor} improvement in {patience} validations"
            else:
                improved = False
            record["epoch_seconds"] = time.perf_counter() - epoch_started
            self.history.append(record)
            self.epoch += 1
            self.step_in_epoch = 0
            if over_time and self.stop_reason is None:
                self.stop_reason = f"time budget of {cfg.max_train_seconds:.0f} s reached"
            if improved:
                self.save("best.safetensors")
            self.save()
            if self.ctx.is_main:
                self.history.write(self.run_dir)
            for cb in self.callbacks:
                cb.on_epoch_end(self, record)
            if self.stop_reason is None:
                self._follow_the_clock()
        summary = self.summary(resumed)
        if self.ctx.is_main:
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        for cb in self.callbacks:
            cb.on_train_end(self, summary)
        barrier(self.ctx)
        return summary

    def summary(self, resumed: bool = False) -> dict:
        """Machine-readable outcome of the run (what ``summary.json`` holds)."""
        last = self.history.records[-1] if self.history.records else {}
        return {
            "status": "completed", "stop_reason": self.stop_reason or "max_epochs reached",
            "epochs": self.epoch, "global_step": self.global_step, "resumed": resumed,
            "world_size": self.ctx.world_size, "device": self.ctx.device, "precision": self.precision.name,
            "monitor": self.config.monitor, "best_score": self.best_score, "best_epoch": self.best_epoch,
            "last": last, "run_dir": str(self.run_dir.resolve()),
            "checkpoints": {"last": "checkpoints/last.safetensors",
                            "best": "checkpoints/best.safetensors" if self.best_epoch is not None else None},
            "config": self.config.to_dict(),
        }
