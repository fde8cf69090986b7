"""Export/compile checks too slow for CI: SwinUNETR 3D ``torch.export`` with dynamic spatial sizes, and
``torch.compile`` with the default inductor backend on 3D UNet and DynUNet (CPU).

Run: ``.venv/bin/python -m benchmarks.export_check`` (about 1 min on 2 CPU cores). Ends with one ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import time

import torch

from medcore.networks import build_network


def first(out):
    return out[0] if isinstance(out, list) else out


def seeded(config: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(config).eval()


def check_swin_export(size: int) -> tuple[float, float, float]:
    """Export a tiny 3D SwinUNETR with dynamic D/H/W (multiples of 32), run at a second size, compare."""
    from torch.export import Dim, export

    net = seeded({"name": "swin_unetr", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "feature_size": 12,
                  "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 2})
    dynamic = {2 + i: 32 * Dim(f"n{i}", min=2, max=8) for i in range(3)}
    start = time.perf_counter()
    program = export(net, (torch.randn(1, 1, size, size, size),), dynamic_shapes={"x": dynamic})
    export_s = time.perf_counter() - start
    x = torch.randn(1, 1, size + 32, size - 32, size)
    with torch.no_grad():
        got, want = program.module()(x), net(x)
    return export_s, (got - want).abs().max().item(), float(tuple(got.shape) == tuple(want.shape))


def check_inductor(name: str, extra: dict, size: list[int]) -> tuple[float, float]:
    """Compile with the default backend; return (first-call seconds incl. compilation, max abs diff)."""
    torch._dynamo.reset()
    net = seeded({"name": name, "spatial_dims": 3, "in_channels": 2, "out_channels": 3, **extra})
    compiled = torch.compile(net, fullgraph=True, dynamic=False)
    x = torch.randn(1, 2, *size)
    with torch.no_grad():
        start = time.perf_counter()
        got = first(compiled(x))
        compile_s = time.perf_counter() - start
        want = first(net(x))
    return compile_s, (got - want).abs().max().item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args()
    torch.set_num_threads(2)
    size = 128
    export_s, swin_diff, same_shape = check_swin_export(size)
    print(f"swin_unetr 3D export size={size}: {export_s:.1f}s, max|diff| at 2nd size={swin_diff:.2e}")
    unet_s, unet_diff = check_inductor("unet", {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 2},
                                       [16, 16, 16])
    print(f"unet 3D inductor: first call {unet_s:.1f}s, max|diff|={unet_diff:.2e}")
    dyn_s, dyn_diff = check_inductor("dynunet", {"kernel_size": [3, 3, 3], "strides": [1, 2, 2],
                                                 "filters": [4, 8, 16], "res_block": True}, [16, 16, 16])
    print(f"dynunet 3D inductor: first call {dyn_s:.1f}s, max|diff|={dyn_diff:.2e}")
    ok = same_shape and swin_diff <= 1e-4 and unet_diff <= 1e-4 and dyn_diff <= 1e-4
    print(f"RESULT ok={int(ok)} swin3d_export_s={export_s:.1f} swin3d_max_diff={swin_diff:.2e} "
          f"unet3d_inductor_compile_s={unet_s:.1f} unet3d_max_diff={unet_diff:.2e} "
          f"dynunet3d_inductor_compile_s={dyn_s:.1f} dynunet3d_max_diff={dyn_diff:.2e}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
