"""Acceptance 2: SIGKILL mid-epoch, resume from the last checkpoint -> bit-identical final weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from engine_tiny_train import train_in_process
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("engine_tiny_train.py")
ROOT = Path(__file__).resolve().parents[2]
COMMON = ["--batch-size", "2", "--epochs", "2", "--ckpt-every", "3", "--dropout", "0.2", "--optimizer", "sgd"]


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    return env


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    train_in_process(reference, batch_size=2, epochs=2, ckpt_every=3, dropout=0.2, optimizer="sgd")

    # 8 steps per epoch; checkpoints every 3 steps. Kill during epoch 1 (after step 11: last ckpt at 9).
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(killed), *COMMON, "--pause", "0.2"], env=_env())
    try:
        deadline = time.monotonic() + 120
        while not (killed / "step_11").exists():
            assert proc.poll() is None, "training exited before it could be killed"
            assert time.monotonic() < deadline, "training did not reach step 11"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "final.safetensors").exists()
    assert (killed / "checkpoints" / "last.safetensors").exists()

    # resume with two loader workers: the augmentation draws must not depend on the worker count
    subprocess.run([sys.executable, str(SCRIPT), str(killed), *COMMON, "--workers", "2"], check=True, env=_env(),
                   timeout=120)
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["resumed"] is True and summary["global_step"] == 16
    a, b = load_file(str(reference / "final.safetensors")), load_file(str(killed / "final.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after kill-and-resume"
    ha = json.loads((reference / "history.json").read_text())
    hb = json.loads((killed / "history.json").read_text())
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]
    assert [r["val_dice_mean"] for r in ha] == [r["val_dice_mean"] for r in hb]
