"""Acceptance 1: a 2-process gloo run under real torchrun equals the 1-process run with the doubled batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from engine_tiny_train import free_port, subprocess_env, train_in_process
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("engine_tiny_train.py")


def test_two_process_gloo_matches_single_process_doubled_batch(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    # fp32: a batch of 4 and two of 2 round differently in bf16 (the CPU default where AMX is present)
    train_in_process(single, batch_size=4, amp="fp32")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
                    "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(SCRIPT), str(ddp),
                    "--batch-size", "2", "--amp", "fp32"],
                   check=True, env=subprocess_env(), timeout=180, capture_output=True)
    a, b = load_file(str(single / "final.safetensors")), load_file(str(ddp / "final.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
    import json

    ha = json.loads((single / "history.json").read_text())
    hb = json.loads((ddp / "history.json").read_text())
    assert len(ha) == len(hb) == 2
    for ra, rb in zip(ha, hb):
        assert abs(ra["train_loss"] - rb["train_loss"]) < 1e-5
        assert abs(ra["val_dice_mean"] - rb["val_dice_mean"]) < 1e-6  # sharded evaluation, all-reduced
    sa = json.loads((ddp / "summary.json").read_text())
    assert sa["world_size"] == 2 and sa["global_step"] == 8
    # only rank 0 wrote: one set of files, no per-rank copies
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
