"""A tiny, deterministic training run used by the engine tests (as a plain script and under torchrun).

python tests/engine/engine_tiny_train.py RUN_DIR [--batch-size B] [--epochs E] [--ckpt-every N] ...
Writes RUN_DIR/final.safetensors (the final weights) on rank 0.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from medcore.engine.data import EpochDataset  # noqa: E402
from medcore.engine.distributed import all_reduce_sum, init_distributed, shard_indices, shutdown_distributed  # noqa: E402
from medcore.engine.trainer import Callback, Trainer, TrainerConfig  # noqa: E402


def subprocess_env(**extra: str) -> dict:
    """The environment for a test's child process: one thread, this checkout first on ``PYTHONPATH`` (the
    caller's entries kept), and no torchrun variables leaking in from the caller."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **extra}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_item(index: int, size: int = 8) -> dict:
    g = torch.Generator().manual_seed(1000 + index)
    image = torch.randn(1, size, size, size, generator=g)
    label = (image[0] > 0.3).long()
    return {"image": image, "label": label}


def augment(item: dict, rng: torch.Generator) -> dict:
    image, label = item["image"], item["label"]
    if torch.rand((), generator=rng) < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    image = image + 0.05 * torch.randn(image.shape, generator=rng)
    return {"image": image, "label": label}


class TinyNet(nn.Module):
    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1, bias=False), nn.InstanceNorm3d(4), nn.LeakyReLU(0.01),
                                  nn.Dropout3d(dropout), nn.Conv3d(4, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def dice_evaluator(items: list[dict]):
    def evaluate(model, ctx, precision) -> dict:
        sums = torch.zeros(2, dtype=torch.float64)
        for i in shard_indices(len(items), ctx):
            pred = model(items[i]["image"][None].to(ctx.device)).argmax(1)[0].cpu()
            ref = items[i]["label"]
            inter, total = ((pred == 1) & (ref == 1)).sum().item(), (pred == 1).sum().item() + (ref == 1).sum().item()
            sums += torch.tensor([2 * inter / max(total, 1), 1.0], dtype=torch.float64)
        sums = all_reduce_sum(sums, ctx)
        return {"val_dice_mean": (sums[0] / sums[1]).item()}
    return evaluate


class Pause(Callback):
    """Write ``RUN_DIR/step_N`` markers and sleep a little after each step (so a test can kill mid-epoch)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, trainer, loss) -> None:
        if trainer.ctx.is_main:
            (trainer.run_dir / f"step_{trainer.global_step}").touch()
        time.sleep(self.seconds)


def train(run_dir: str | Path, batch_size: int = 4, epochs: int = 2, items: int = 16, ckpt_every: int = 0,
          dropout: float = 0.0, workers: int = 0, optimizer: str = "adamw", pause: float = 0.0,
          device: str = "cpu", amp: str = "auto") -> dict:
    """Train the tiny model into ``run_dir`` (under torchrun: one shard per process); final weights on rank 0."""
    ctx = init_distributed(device)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False  # repeatable on a GPU too
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = [make_item(i) for i in range(items)]
    config = TrainerConfig(max_epochs=epochs, batch_size=batch_size, checkpoint_every_steps=ckpt_every,
                           seed=7, num_workers=workers, optimizer={"name": optimizer, "lr": 1e-2},
                           schedule={"kind": "cosine", "warmup_steps": 2}, grad_clip=1.0, progress=False, amp=amp)
    torch.manual_seed(0)
    trainer = Trainer(TinyNet(dropout), nn.CrossEntropyLoss(), EpochDataset(data, augment, seed=3), run_dir,
                      config, evaluator=dice_evaluator([make_item(100 + i) for i in range(5)]), ctx=ctx,
                      callbacks=[Pause(pause)] if pause else [])
    summary = trainer.fit()
    if ctx.is_main:
        save_file(
            {k: v.contiguous() for k, v in trainer.model.state_dict().items()}, str(run_dir / "final.safetensors")
        )
    return summary


def train_in_process(run_dir: str | Path, **kwargs) -> dict:
    """:func:`train` in the calling (test) process, on 1 thread, leaving its RNG and thread settings as they were."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            return train(run_dir, **kwargs)
    finally:
        torch.set_num_threads(threads)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--items", type=int, default=16)
    p.add_argument("--ckpt-every", type=int, default=0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--optimizer", default="adamw")
    p.add_argument("--pause", type=float, default=0.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="auto")
    a = p.parse_args()
    torch.set_num_threads(1)
    train(a.run_dir, a.batch_size, a.epochs, a.items, a.ckpt_every, a.dropout, a.workers, a.optimizer, a.pause,
          a.device, a.amp)
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
