"""Mixed precision and memory-format choices: bf16 where the GPU supports it, else fp16 + GradScaler.

On the CPU everything here is a no-op (full precision, no scaler), so one code path serves both.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import cast

import torch


@dataclasses.dataclass(frozen=True)
class Precision:
    """The autocast dtype (``None`` = full precision) and whether a gradient scaler is needed."""

    dtype: torch.dtype | None = None
    device_type: str = "cpu"

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def choose_precision(device: str, mode: str = "auto") -> Precision:
    """``mode``: "auto" (bf16 or fp16 on CUDA, fp32 elsewhere), "bf16", "fp16" or "fp32"/"off"."""
    mode = str(mode).lower()
    if mode not in ("auto", "bf16", "fp16", "fp32", "off"):
        raise ValueError(f"unknown amp mode {mode!r}; choose auto, bf16, fp16 or fp32")
    if not device.startswith("cuda") or mode in ("fp32", "off"):
        return Precision(None, "cpu" if not device.startswith("cuda") else "cuda")
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return Precision(torch.bfloat16 if mode == "bf16" else torch.float16, "cuda")


def make_scaler(precision: Precision) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 (a disabled scaler passes gradients through unchanged)."""
    return torch.amp.GradScaler("cuda", enabled=precision.needs_scaler)


def use_channels_last(model: torch.nn.Module, device: str, spatial_dims: int = 3) -> bool:
    """Switch a 3D model to ``channels_last_3d``, the native layout of both cuDNN and oneDNN (CPU) 3D
    convolutions; see ``benchmarks/RESULTS.md`` (hippocampus) for the measured step time."""
    if spatial_dims != 3:
        return False
    model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]  # missing from torch's stubs
    return True


def maybe_compile(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile(model)`` when asked; the original module keeps the weights (compile shares them)."""
    return cast(torch.nn.Module, torch.compile(model)) if enabled else model
