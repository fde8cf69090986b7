"""Sliding-window inference, Gaussian blending: medcore vs MONAI on the same model and volume.

Run: ``python -m benchmarks.sliding_window`` (256x256x160, 96^3 windows, overlap 0.5) or
``--quick`` (128x128x80). ``--device cuda`` runs on a GPU and measures peak GPU memory with
torch's allocator statistics; on CPU peak memory is the RSS rise above the starting level,
sampled every millisecond (glibc's mmap threshold is pinned so freed buffers leave RSS).
Models: ``--model tiny`` (a 2-layer 3D conv net, the CPU default: a real U-Net takes ~3 s per
96^3 window on 2 cores) or ``--model unet`` (medcore's residual U-Net, 16-256 channels, the GPU
default). Racers: MONAI; medcore with the same memory layout; medcore with channels-last windows
and model, which is what ``medcore predict`` uses on CPU. ``speedup_vs_monai`` is the latter on
CPU and the same-layout run on GPU; both ratios are printed.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import threading
import time

import torch

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class PeakRSS:
    """Context manager: the peak RSS rise (bytes) while the block runs, sampled every ms."""

    def __enter__(self):
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.rise = self.peak - self.base


def model(kind: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "unet":
        from medcore.networks import build_network

        return build_network({"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                              "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2],
                              "num_res_units": 2}).to(device).eval()
    return torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv3d(8, 3, 1)).to(device).eval()


def measure(fn, device: torch.device, repeats: int):
    best, peak, out = float("inf"), 0, None
    for _ in range(repeats):
        out = None
        if device.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            out = fn()
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
            peak = max(peak, torch.cuda.max_memory_allocated() - base)
        else:
            with PeakRSS() as mem:
                t = time.perf_counter()
                out = fn()
                best = min(best, time.perf_counter() - t)
            peak = max(peak, mem.rise)
    return best, peak, out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # make freed CPU buffers leave RSS at once
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
        os.execv(sys.executable, [sys.executable, "-m", "benchmarks.sliding_window", *argv])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128x128x80 volume, one repeat")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sw-batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", choices=["tiny", "unet"], default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = (128, 128, 80) if args.quick else (256, 256, 160)
    repeats = 1 if args.quick else 3
    roi, overlap = (96, 96, 96), 0.5
    x = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    net = model(args.model or ("unet" if device.type == "cuda" else "tiny"), device)
    net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last_3d)

    from monai.inferers import sliding_window_inference as monai_swi

    from medcore.inferers import sliding_window_inference

    def run_medcore():
        with torch.inference_mode():
            return sliding_window_inference(x, roi, net, overlap=overlap, mode="gaussian",
                                            sw_batch_size=args.sw_batch_size)

    def run_medcore_cl():
        with torch.inference_mode():
            return sliding_window_inference(x, roi, net_cl, overlap=overlap, mode="gaussian",
                                            sw_batch_size=args.sw_batch_size, channels_last=True)

    def run_monai():
        with torch.inference_mode():
            return torch.as_tensor(monai_swi(x, roi, args.sw_batch_size, net, overlap=overlap, mode="gaussian"))

    with torch.inference_mode():  # warm-up (kernels, allocator)
        net(torch.zeros(args.sw_batch_size, 1, *roi, device=device))
    t_monai, m_monai, ref = measure(run_monai, device, repeats)
    ref = ref.cpu()
    t_same, m_same, ours = measure(run_medcore, device, repeats)
    diff = float((ours.cpu() - ref).abs().max())
    del ours
    t_cl, m_cl, ours_cl = measure(run_medcore_cl, device, repeats)
    diff = max(diff, float((ours_cl.cpu() - ref).abs().max()))
    del ours_cl
    mb = 1 / 2 ** 20
    print(f"volume {shape}, roi {roi}, overlap {overlap}, gaussian, sw_batch {args.sw_batch_size}, {device}")
    print(f"MONAI                  {t_monai:.3f}s peak +{m_monai * mb:.0f} MiB")
    print(f"medcore same layout    {t_same:.3f}s peak +{m_same * mb:.0f} MiB  ratio {t_monai / t_same:.2f}x")
    print(f"medcore channels-last  {t_cl:.3f}s peak +{m_cl * mb:.0f} MiB  ratio {t_monai / t_cl:.2f}x")
    print(f"max |diff| vs MONAI {diff:.2e}")
    t_ours, m_ours = (t_cl, m_cl) if device.type == "cpu" else (t_same, m_same)
    print(f"RESULT speedup_vs_monai={t_monai / t_ours:.2f} speedup_same_layout={t_monai / t_same:.2f} "
          f"speedup_channels_last={t_monai / t_cl:.2f} medcore_s={t_ours:.3f} monai_s={t_monai:.3f} "
          f"medcore_peak_mib={m_ours * mb:.0f} monai_peak_mib={m_monai * mb:.0f} max_abs_diff={diff:.1e} "
          f"device={device.type} shape={'x'.join(map(str, shape))}")


if __name__ == "__main__":
    main()
