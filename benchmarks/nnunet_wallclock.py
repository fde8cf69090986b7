"""nnU-Net v2's default trainer with a wall-clock stop: the only change the race makes to nnU-Net.

This file runs inside nnU-Net's own environment (``.venv-nnunet``, made by ``make bench-tools``) and
imports nothing from medcore. nnU-Net finds a trainer by importing every module of its trainer folder,
and its Primus trainers need torchvision ops that do not load beside a CPU torch; so this driver tells
nnU-Net's lookup about ``nnUNetTrainerWallClock`` directly, then calls nnU-Net's own training and
predictor entry points.

``nnUNetTrainerWallClock`` is ``nnUNetTrainer`` unchanged (plans, network, loss, optimiser, learning
rate schedule, augmentation, validation) except that training stops once ``$MEDCORE_NNUNET_BUDGET_S``
seconds have passed since its first training step, even mid-epoch. It then finishes as nnU-Net always
does (final checkpoint, loaders shut down). It also measures, without changing anything, how long each
step waited for its batch, and writes that with the step count to ``race_stats.json`` in the fold folder.

Run as a script::

    python nnunet_wallclock.py train DATASET CONFIGURATION FOLD [--device cpu|cuda]   (then final validation)
    python nnunet_wallclock.py predict MODEL_FOLDER FOLD INPUT_FOLDER OUTPUT_FOLDER [--device cpu|cuda]
"""

from __future__ import annotations

import json
import os
import sys
import time
from os.path import join

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

BUDGET_ENV = "MEDCORE_NNUNET_BUDGET_S"


class BudgetSpent(Exception):
    """Raised between two training steps once the wall-clock budget is spent."""


class _TimedLoader:
    """Wraps nnU-Net's training loader and adds up the time ``next()`` waits for a batch."""

    def __init__(self, loader):
        self.loader = loader
        self.wait_s = 0.0

    def __next__(self):
        started = time.perf_counter()
        batch = next(self.loader)
        self.wait_s += time.perf_counter() - started
        return batch

    def __iter__(self):
        return self

    def __getattr__(self, name):
        return getattr(self.loader, name)


class nnUNetTrainerWallClock(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming scheme for trainers)
    """nnU-Net's default trainer, stopped by the wall clock."""

    def on_train_start(self):
        super().on_train_start()
        self.budget_s = float(os.environ[BUDGET_ENV])
        self.steps_done = 0
        self.step_s = 0.0
        self.train_started = None
        self.dataloader_train = _TimedLoader(self.dataloader_train)

    def train_step(self, batch: dict) -> dict:
        if self.train_started is None:
            self.train_started = time.perf_counter()
        elif time.perf_counter() - self.train_started >= self.budget_s:
            raise BudgetSpent
        started = time.perf_counter()
        out = super().train_step(batch)
        self.step_s += time.perf_counter() - started
        self.steps_done += 1
        return out

    def on_train_end(self):
        if isinstance(self.dataloader_train, _TimedLoader):
            wait = self.dataloader_train.wait_s
            self.dataloader_train = self.dataloader_train.loader
        else:
            wait = 0.0
        elapsed = time.perf_counter() - self.train_started if self.train_started else 0.0
        stats = {"steps": self.steps_done, "batch_size": self.batch_size, "train_seconds": elapsed,
                 "step_seconds": self.step_s, "data_wait_seconds": wait, "epochs": self.current_epoch,
                 "device": str(self.device)}
        with open(join(self.output_folder, "race_stats.json"), "w") as fh:
            json.dump(stats, fh, indent=1)
        super().on_train_end()


def _known_to_nnunet() -> None:
    """Let nnU-Net's trainer lookup (training and predictor) answer this trainer without a folder scan."""
    import nnunetv2.inference.predict_from_raw_data as predict_module
    import nnunetv2.run.run_training as training_module

    scan = training_module.recursive_find_trainer_class_by_name

    def find(name: str):
        return nnUNetTrainerWallClock if name == nnUNetTrainerWallClock.__name__ else scan(name)

    training_module.recursive_find_trainer_class_by_name = find
    predict_module.recursive_find_trainer_class_by_name = find


def _threads(device: str) -> None:
    if device == "cpu":
        torch.set_num_threads(int(os.environ.get("MEDCORE_NNUNET_THREADS", os.cpu_count() or 1)))


def train_fold(dataset: str, configuration: str, fold: int, device: str) -> None:
    """Train one fold with :class:`nnUNetTrainerWallClock`, then run nnU-Net's final validation."""
    from nnunetv2.run.run_training import get_trainer_from_args

    _known_to_nnunet()
    _threads(device)
    trainer = get_trainer_from_args(dataset, configuration, fold, nnUNetTrainerWallClock.__name__,
                                    device=torch.device(device))
    try:
        trainer.run_training()
    except BudgetSpent:
        trainer.current_epoch += 1  # on_train_end steps back one epoch, as after a normal last epoch
        trainer.on_train_end()
    trainer.perform_actual_validation()


def predict_folder(model_folder: str, fold: int, source: str, target: str, device: str) -> None:
    """nnU-Net's own predictor (mirroring, Gaussian sliding window, export to the original geometry)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    _known_to_nnunet()
    _threads(device)
    predictor = nnUNetPredictor(device=torch.device(device))
    predictor.initialize_from_trained_model_folder(model_folder, (fold,), "checkpoint_final.pth")
    predictor.predict_from_files(source, target, num_processes_preprocessing=1,
                                 num_processes_segmentation_export=1)


if __name__ == "__main__":
    args = sys.argv[1:]
    dev = "cpu"
    if "--device" in args:
        i = args.index("--device")
        dev = args[i + 1]
        del args[i:i + 2]
    if args[0] == "train":
        train_fold(args[1], args[2], int(args[3]), dev)
    elif args[0] == "predict":
        predict_folder(args[1], int(args[2]), args[3], args[4], dev)
    else:
        sys.exit(f"usage: {sys.argv[0]} train DATASET CONFIGURATION FOLD | predict MODEL FOLD IN OUT [--device D]")
