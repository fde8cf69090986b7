"""Acceptance 2: SIGKILL mid-epoch, resume from the last checkpoint -> bit-identical final weights (CPU).

On a GPU the same run under bf16 and under fp16 (whose checkpoint carries the gradient scaler and the
CUDA RNG state) must also resume to the uninterrupted run's weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from engine_tiny_train import subprocess_env, train_in_process
from safetensors.torch import load_file

from medcore.engine.amp import choose_precision
from medcore.engine.checkpoint import load_checkpoint

SCRIPT = Path(__file__).with_name("engine_tiny_train.py")
COMMON = ["--batch-size", "2", "--epochs", "2", "--ckpt-every", "3", "--dropout", "0.2", "--optimizer", "sgd"]


CUDA = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("device,amp", [("cpu", "fp32"), ("cpu", "bf16"), pytest.param("cuda", "bf16", marks=CUDA),
                                        pytest.param("cuda", "fp16", marks=CUDA)])
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, device, amp):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    common = [*COMMON, "--device", device, "--amp", amp]
    train_in_process(reference, batch_size=2, epochs=2, ckpt_every=3, dropout=0.2, optimizer="sgd", device=device,
                     amp=amp)

    # 8 steps per epoch; checkpoints every 3 steps. Kill during epoch 1 (after step 11: last ckpt at 9).
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(killed), *common, "--pause", "0.2"], env=subprocess_env())
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
    if device == "cuda":
        state = load_checkpoint(killed / "checkpoints" / "last.safetensors")
        assert "torch_cuda" in state["rng"]
        assert (state["scaler"].get("scale", 0) > 0) == (amp == "fp16"), state["scaler"]

    # resume with two loader workers: the augmentation draws must not depend on the worker count
    subprocess.run(
        [sys.executable, str(SCRIPT), str(killed), *common, "--workers", "2"],
        check=True,
        env=subprocess_env(),
        timeout=120,
    )
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["resumed"] is True and summary["global_step"] == 16
    assert summary["precision"] == choose_precision(device, amp).name
    a, b = load_file(str(reference / "final.safetensors")), load_file(str(killed / "final.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), (f"{key} differs after kill-and-resume on {device} ({amp}): "
                                             f"max |diff| {(a[key].float() - b[key].float()).abs().max():.3g}")
    ha = json.loads((reference / "history.json").read_text())
    hb = json.loads((killed / "history.json").read_text())
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]
    assert [r["val_dice_mean"] for r in ha] == [r["val_dice_mean"] for r in hb]
