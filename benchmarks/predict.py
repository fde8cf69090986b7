"""End-to-end prediction of a real CT volume: medcore vs the equivalent MONAI chain.

Both racers read the same NIfTI (a GE head CT from the shared data, converted once by dcm2niix
before timing), reorient to RAS, resample to 1.5x1.5x2 mm, window [-1000, 1000] HU to [0, 1],
run the same network weights in a Gaussian-blended sliding window (96x96x64, overlap 0.5),
softmax, map the probabilities back onto the original grid, argmax and write a uint8 NIfTI.
medcore: ``predict_file`` with a model directory. MONAI: LoadImaged, EnsureChannelFirstd,
Orientationd, Spacingd, ScaleIntensityRanged, sliding_window_inference, Activationsd, Invertd,
AsDiscreted, SaveImaged. Model loading is outside the timing for both.

Run: ``python -m benchmarks.predict`` (``--quick``: one repeat). ``--device cuda`` for a GPU.
``--model tiny`` (CPU default: a 2-level U-Net with 4/8 channels) or ``--model unet`` (16-256
channels, GPU default).
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PIXDIM = (1.5, 1.5, 2.0)
ROI = (96, 96, 64)
OVERLAP = 0.5


def ct_volume(workdir: Path) -> Path:
    """Convert the GE head CT (tilt-corrected by dcm2niix) once; return the NIfTI path."""
    data = Path(os.environ.get("MEDCORE_TEST_DATA", ROOT.parent / "shared" / "data"))
    series = data / "dicom" / "dcm_qa_ct" / "In" / "GE"
    if not series.is_dir():
        sys.exit(f"benchmark input {series} is missing; set MEDCORE_TEST_DATA to the shared data folder")
    exe = Path(sys.executable).with_name("dcm2niix")
    subprocess.run([str(exe if exe.exists() else "dcm2niix"), "-z", "y", "-f", "ct", "-o", str(workdir),
                    str(series)], check=True, capture_output=True)
    tilted = sorted(workdir.glob("ct*Tilt*.nii.gz"))
    return tilted[0] if tilted else sorted(workdir.glob("ct*.nii.gz"))[0]


def network_config(kind: str) -> dict:
    channels, strides, units = ([4, 8], [2], 1) if kind == "tiny" else ([16, 32, 64, 128, 256], [2, 2, 2, 2], 2)
    return {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": channels,
            "strides": strides, "num_res_units": units}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat instead of three")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=["tiny", "unet"], default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--contiguous", action="store_true",
                        help="keep medcore's model in the default memory layout (no channels-last on CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    repeats = 1 if args.quick else 3
    kind = args.model or ("unet" if device.type == "cuda" else "tiny")

    from monai.inferers import sliding_window_inference as monai_swi
    from monai.transforms import (
        Activationsd,
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        Orientationd,
        SaveImaged,
        ScaleIntensityRanged,
        Spacingd,
    )

    from medcore.inferers import load_model_dir, predict_file, save_model_dir
    from medcore.inferers.predict import build_preprocessing
    from medcore.networks import build_network

    work = Path(tempfile.mkdtemp(prefix="medcore-bench-predict-"))
    source = ct_volume(work)
    torch.manual_seed(0)
    net = build_network(network_config(kind)).eval()
    preprocessing = [{"name": "Orientation", "axcodes": "RAS"}, {"name": "Spacing", "pixdim": list(PIXDIM)},
                     {"name": "ScaleIntensityRange", "a_min": -1000.0, "a_max": 1000.0, "b_min": 0.0,
                      "b_max": 1.0, "clip": True}]
    model_dir = save_model_dir(work / "model", net, preprocessing=preprocessing,
                               inference={"roi_size": list(ROI), "overlap": OVERLAP, "mode": "gaussian",
                                          "sw_batch_size": 4})
    ours_model, spec = load_model_dir(model_dir, device=device, channels_last=False if args.contiguous else None)
    pre = build_preprocessing(spec.preprocessing)
    monai_model = copy.deepcopy(net).to(device)

    monai_pre = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
                         Orientationd("image", axcodes="RAS"), Spacingd("image", pixdim=PIXDIM, mode="bilinear"),
                         ScaleIntensityRanged("image", -1000.0, 1000.0, 0.0, 1.0, clip=True)])
    monai_post = Compose([Activationsd("pred", softmax=True),
                          Invertd("pred", transform=monai_pre, orig_keys="image", nearest_interp=False,
                                  to_tensor=True),
                          AsDiscreted("pred", argmax=True),
                          SaveImaged("pred", output_dir=str(work / "monai"), output_postfix="seg",
                                     separate_folder=False, output_dtype=np.uint8, resample=False,
                                     print_log=False)])

    def run_monai():
        with torch.inference_mode():
            sample = monai_pre({"image": str(source)})
            image = sample["image"]
            logits = monai_swi(image[None].to(device), ROI, 4, monai_model, overlap=OVERLAP, mode="gaussian")
            pred = logits[0].cpu()
            sample["pred"] = image.__class__(pred, meta=image.meta, applied_operations=image.applied_operations)
            monai_post(sample)

    def run_medcore():
        predict_file(ours_model, spec, source, work / "medcore" / "ct_seg.nii.gz", device=device, pre=pre)

    def best(fn):
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        return min(times)

    run_medcore()  # warm-up both (imports, kernels)
    run_monai()
    t_monai = best(run_monai)
    t_ours = best(run_medcore)
    ours = np.asarray(nib.load(str(work / "medcore" / "ct_seg.nii.gz")).dataobj)
    theirs_path = next((work / "monai").glob("*.nii.gz"))
    theirs = np.squeeze(np.asarray(nib.load(str(theirs_path)).dataobj))
    agree = float((ours == theirs).mean()) if ours.shape == theirs.shape else float("nan")
    affine_diff = float(np.abs(nib.load(str(work / "medcore" / "ct_seg.nii.gz")).affine
                               - nib.load(str(source)).affine).max())
    speedup = t_monai / t_ours
    print(f"CT {nib.load(str(source)).shape} -> pixdim {PIXDIM}, roi {ROI}, model {kind}, {device}")
    print(f"medcore {t_ours:.3f}s  MONAI {t_monai:.3f}s  ratio {speedup:.2f}x  label agreement {agree:.4f}  "
          f"output shapes {ours.shape} / {theirs.shape}")
    print(f"RESULT speedup_vs_monai={speedup:.2f} medcore_s={t_ours:.3f} monai_s={t_monai:.3f} "
          f"label_agreement={agree:.4f} affine_max_diff={affine_diff:.1e} model={kind} device={device.type} "
          f"channels_last={not args.contiguous and device.type == 'cpu'}")


if __name__ == "__main__":
    main()
