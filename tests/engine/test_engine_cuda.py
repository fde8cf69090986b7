"""On a GPU: the engine picks NCCL for CUDA devices, and an NCCL process group initialises and reduces.

One GPU allows one NCCL rank (NCCL refuses two ranks on the same device), so this checks the backend
choice and a world-size-1 NCCL group; multi-GPU runs need a machine with several GPUs.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from engine_tiny_train import free_port, subprocess_env

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SCRIPT = """
import torch, torch.distributed as dist
from medcore.engine.distributed import choose_backend, choose_device
device = choose_device(0, "auto")
backend = choose_backend(device)
dist.init_process_group(backend, world_size=1, rank=0, device_id=torch.device(device))
x = torch.arange(4, dtype=torch.float64, device=device)
dist.all_reduce(x)
dist.barrier()
print(device, dist.get_backend(), torch.cuda.nccl.version(), x.tolist())
dist.destroy_process_group()
"""


def test_nccl_initialises_for_a_cuda_device():
    env = subprocess_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    device, backend, *_ = out.stdout.split()
    assert device == "cuda:0" and backend == "nccl", out.stdout
    assert out.stdout.strip().endswith("[0.0, 1.0, 2.0, 3.0]"), out.stdout
