"""Segmentation losses, forward + backward: medcore vs MONAI on the same logits and labels.

Run: ``python -m benchmarks.losses`` (2 x 4 x 96^3) or ``--quick`` (2 x 4 x 48^3). Each pair must
agree to 1e-6 on the same input in float64 before it is timed in float32. The float32 error of each
against the float64 value is reported too: MONAI's squared-prediction intersection is a difference
of norms, which loses float32 digits on large volumes. Prints one line per loss and ends with
``RESULT speedup_vs_monai=<geometric mean> ...`` (the peer's time over medcore's).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import torch


def cases():
    from monai import losses as monai

    import medcore.losses as ours

    common = dict(softmax=True, to_onehot_y=True)
    return {
        "dice": (ours.DiceLoss(**common), monai.DiceLoss(**common)),
        "dice_batch_squared": (ours.DiceLoss(batch=True, squared_pred=True, **common),
                               monai.DiceLoss(batch=True, squared_pred=True, **common)),
        "dice_ce": (ours.DiceCELoss(**common), monai.DiceCELoss(**common)),
        "dice_focal": (ours.DiceFocalLoss(**common), monai.DiceFocalLoss(**common)),
        "focal_softmax": (ours.FocalLoss(use_softmax=True, to_onehot_y=True),
                          monai.FocalLoss(use_softmax=True, to_onehot_y=True)),
        "tversky": (ours.TverskyLoss(alpha=0.3, beta=0.7, **common), monai.TverskyLoss(alpha=0.3, beta=0.7, **common)),
        "generalized_dice": (ours.GeneralizedDiceLoss(**common), monai.GeneralizedDiceLoss(**common)),
    }


def time_loss(loss, logits: torch.Tensor, labels: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Best wall time of forward + backward, and the loss value."""
    best, value = float("inf"), float("nan")
    for _ in range(repeats):
        x = logits.detach().requires_grad_(True)
        t = time.perf_counter()
        out = loss(x, labels)
        out.backward()
        best = min(best, time.perf_counter() - t)
        value = float(out)
    return best, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="48^3 instead of 96^3")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = 48 if args.quick else 96
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, size, size, size, generator=g)
    labels = torch.randint(0, 4, (2, 1, size, size, size), generator=g)
    labels[0][labels[0] == 3] = 0  # an empty class
    ratios = []
    worst_ours = worst_peer = 0.0
    warnings.simplefilter("ignore")
    print(f"input 2x4x{size}^3 float32, {args.threads} threads, best of {args.repeats} (forward + backward)")
    for name, (ours, peer) in cases().items():
        exact_ours, exact_peer = float(ours(logits.double(), labels)), float(peer(logits.double(), labels))
        if not math.isclose(exact_ours, exact_peer, rel_tol=0, abs_tol=1e-6):
            raise SystemExit(f"{name}: medcore {exact_ours!r} differs from MONAI {exact_peer!r} in float64")
        t_ours, v_ours = time_loss(ours, logits, labels, args.repeats)
        t_peer, v_peer = time_loss(peer, logits, labels, args.repeats)
        err_ours, err_peer = abs(v_ours - exact_ours), abs(v_peer - exact_ours)
        worst_ours, worst_peer = max(worst_ours, err_ours), max(worst_peer, err_peer)
        ratios.append(t_peer / t_ours)
        print(f"{name:20s} medcore {t_ours * 1e3:8.1f} ms  monai {t_peer * 1e3:8.1f} ms  ratio {ratios[-1]:.2f}  "
              f"float32 error medcore {err_ours:.1e} monai {err_peer:.1e}")
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"RESULT speedup_vs_monai={geo:.2f} min_ratio={min(ratios):.2f} max_ratio={max(ratios):.2f} size={size} "
          f"losses={len(ratios)} float32_error_medcore={worst_ours:.1e} float32_error_monai={worst_peer:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
