"""Stage ``train``: ``torchrun --nproc_per_node N`` running medcore's training on the dataset version.

The run folder is keyed by (dataset hash, training parameters), so a rerun after a crash resumes the
same run from its last checkpoint instead of starting a second one.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from medcore.utils.atomic import sweep_tmp
from pipelines.steps.cache import cache_ready, training_config
from pipelines.steps.layout import Layout, write_json
from pipelines.steps.register import client_for, find_version
from pipelines.steps.results import DatasetVersion, TrainedModel, TrainingDecision, TrainingJob, load, save


def num_processes(params: dict) -> int:
    """``train.nproc``, or one per GPU, or 2 CPU processes."""
    n = int(params["train"]["nproc"])
    if n > 0:
        return n
    import torch

    return torch.cuda.device_count() or 2


def run_key(params: dict) -> str:
    """The training's identity: the dataset version, the training parameters and the plan overrides."""
    dataset = load(Layout.from_params(params).dataset_version, DatasetVersion).dataset_hash
    blob = json.dumps({"dataset": dataset, "train": params["train"], "plan": params["plan"]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def training_decision(params: dict, force: bool = False) -> TrainingDecision:
    """What to do: the one "is this already trained?" rule of Dagster and DVC. A training whose key (dataset
    version, training parameters, plan overrides) has a registered version is not repeated (``skip``); a
    finished training not registered yet (killed before registration) is reused (``reuse``); otherwise, or
    when forced, it runs (``train``; an unfinished run resumes from its last checkpoint)."""
    key = run_key(params)
    version = registered_version(params, key)
    if force:
        return TrainingDecision("train", key, "forced", version)
    if version is not None:
        return TrainingDecision("skip", key, f"skipped: nothing changed since version {version}", version)
    if (Layout.from_params(params).train_dir / key / "summary.json").is_file():
        return TrainingDecision("reuse", key, f"training {key} finished before; not registered yet", None)
    return TrainingDecision("train", key, "the dataset version or the parameters changed", None)


def registered_version(params: dict, key: str) -> str | None:
    """The registered model version of training ``key``, if the registry has one."""
    client, _ = client_for(params)
    version = find_version(client, params["register"]["model_name"], key)
    return str(version.version) if version is not None else None


def prepare_training(params: dict, force: bool = False) -> TrainingJob:
    """Write the run's config; return the command (torchrun), its environment and the run folder. A forced
    run starts afresh: the finished run of the same key is moved aside."""
    layout = Layout.from_params(params)
    key = run_key(params)
    run_dir = layout.train_dir / key
    if force and run_dir.exists():
        run_dir.rename(layout.train_dir / f".tmp-forced-{key}-{uuid.uuid4().hex[:8]}")
        sweep_tmp(layout.train_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = training_config(params, layout, cache_ready(params), run_dir / "model")
    config_path = write_json(run_dir / "medcore_config.json", config)
    nproc = num_processes(params)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "pipelines.train_worker", "--config", str(config_path), "--run-dir", str(run_dir)]
    env = {"OMP_NUM_THREADS": str(params["train"]["threads"] or 1), "PYTHONUNBUFFERED": "1"}
    return TrainingJob(key, str(run_dir), tuple(command), env, nproc)


def finish_training(params: dict, run_dir: str | Path) -> TrainedModel:
    """Read the run's summary and point ``train/latest.json`` at it."""
    summary_path = Path(run_dir) / "summary.json"
    if not summary_path.is_file():
        raise RuntimeError(f"training in {run_dir} ended without summary.json; see the training log above")
    summary = json.loads(summary_path.read_text())
    layout = Layout.from_params(params)
    latest = TrainedModel(Path(run_dir).name, str(Path(run_dir).relative_to(layout.out)),
                          str(Path(summary["model_dir"]).relative_to(layout.out)), summary.get("best_score"),
                          summary.get("best_epoch"), summary.get("epochs"),
                          {k: float(v) for k, v in (summary.get("validation") or {}).items()
                           if isinstance(v, (int, float))})
    save(layout.latest_json, latest)
    return latest


def train(params: dict, force: bool = False) -> TrainedModel:
    """Run training as a plain subprocess (the DVC path; Dagster launches the same command through Pipes)."""
    decision = training_decision(params, force)
    if decision.action != "train":
        print(decision.reason)
        return finish_training(params, Layout.from_params(params).train_dir / decision.run_key)
    job = prepare_training(params, force)
    proc = subprocess.run(list(job.command), env={**os.environ, **job.env})
    if proc.returncode != 0:
        raise RuntimeError(f"training failed (exit {proc.returncode}); rerun to resume from the last checkpoint "
                           f"in {job.run_dir}")
    return finish_training(params, job.run_dir)
