"""Mixed precision and memory-format choices: on a GPU bf16 where supported, else fp16 + GradScaler; on a
CPU bf16 where oneDNN runs it natively (AMX or AVX-512 BF16), else full precision.

The loss is computed in full precision either way (:func:`full_precision`), and only fp16 needs a scaler.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, cast

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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX tiles or AVX-512 BF16), where oneDNN's bf16
    convolutions are faster than fp32 ones; elsewhere bf16 is emulated and slower."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # a torch without the probes
        return False


def choose_precision(device: str, mode: str = "auto") -> Precision:
    """``mode``: "auto", "bf16", "fp16" (CUDA only; full precision on a CPU) or "fp32"/"off". "auto" is bf16
    on CUDA (fp16 where bf16 is missing), and on a CPU bf16 where it is native, else fp32: there bf16 made
    the hippocampus step 1.6x faster and scored higher at the same budget (``benchmarks/RESULTS.md``)."""
    mode = str(mode).lower()
    if mode not in ("auto", "bf16", "fp16", "fp32", "off"):
        raise ValueError(f"unknown amp mode {mode!r}; choose auto, bf16, fp16 or fp32")
    if not device.startswith("cuda"):
        native = mode == "auto" and cpu_has_native_bf16()
        return Precision(torch.bfloat16 if mode == "bf16" or native else None, "cpu")
    if mode in ("fp32", "off"):
        return Precision(None, "cuda")
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return Precision(torch.bfloat16 if mode == "bf16" else torch.float16, "cuda")


def full_precision(output: Any) -> Any:
    """The network's ``output`` (a tensor, or a list/tuple of them for deep supervision) as float32, so the
    loss sums over a patch in full precision whatever autocast computed the logits in."""
    if isinstance(output, (list, tuple)):
        return type(output)(full_precision(o) for o in output)
    return output.float() if torch.is_tensor(output) and output.is_floating_point() else output


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
