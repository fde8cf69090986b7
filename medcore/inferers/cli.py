"""``medcore predict MODEL_DIR INPUT OUTPUT_DIR``: label volumes from a trained model directory.

INPUT is a NIfTI file, a folder of NIfTI files, or a DICOM series folder. Each prediction is
written atomically as ``OUTPUT_DIR/<input name>.nii.gz``; a DICOM series becomes
``series-<hash>.nii.gz`` (a hash of the folder path, so no patient data reaches file names).
With ``--format seg`` each DICOM series becomes a DICOM SEG, ``series-<hash>.dcm``, on the series'
own grid, with segments named after the model's classes, the algorithm identified by
``--model-name``/``--model-version`` and UIDs derived from (series, name, version): the same SEG
the PACS inference job stores. A failing input is reported with its reason and the rest continue;
the exit status is 1 when any input failed and 2 when the model directory itself is unusable.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from tqdm.auto import tqdm

from medcore.io.nifti import NIFTI_SUFFIXES, is_nifti


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", type=Path, help="model directory (model.json + weights.safetensors)")
    parser.add_argument("input", type=Path, help="a NIfTI file, a folder of NIfTI files, or a DICOM series folder")
    parser.add_argument("output_dir", type=Path, help="folder for the predicted label volumes (created)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (GPU when available)")
    tta = parser.add_mutually_exclusive_group()
    tta.add_argument("--tta", dest="tta", action="store_true", default=None, help="average over all flips")
    tta.add_argument("--no-tta", dest="tta", action="store_false", help="no test-time augmentation")
    parser.add_argument("--sw-batch-size", type=int, default=None, help="windows per network call")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--format", choices=("nifti", "seg"), default="nifti",
                        help="nifti (default) or seg: a DICOM SEG per DICOM series folder")
    parser.add_argument("--model-name", default="medcore", help="--format seg: the algorithm name in the SEG")
    parser.add_argument("--model-version", default="0", help="--format seg: the algorithm version (registry version)")


def output_name(source: Path, fmt: str = "nifti") -> str:
    """``<stem>.nii.gz`` for a NIfTI file, ``series-<hash>.nii.gz`` (``.dcm`` for SEG) for a DICOM folder."""
    if source.is_dir():
        digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
        return f"series-{digest}" + (".dcm" if fmt == "seg" else ".nii.gz")
    name = source.name
    for suffix in sorted(NIFTI_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return f"{name}.nii.gz"


def find_inputs(source: Path) -> list[Path]:
    """The volumes INPUT stands for; raises with the reason when there are none."""
    if source.is_file():
        if not is_nifti(source):
            raise ValueError(f"{source}: not a NIfTI file (.nii/.nii.gz); pass a NIfTI file, a folder of them, "
                             "or a DICOM series folder")
        return [source]
    if source.is_dir():
        niftis = sorted(p for p in source.iterdir() if p.is_file() and is_nifti(p))
        if niftis:
            return niftis
        if any(p.is_file() for p in source.iterdir()):
            return [source]  # a DICOM series folder
        raise ValueError(f"{source}: folder holds no NIfTI files and no DICOM files")
    raise FileNotFoundError(f"{source}: no such file or folder")


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def predict_seg(model, spec, source: Path, target: Path, algorithm, device=None, pre=None) -> Path:
    """Predict a DICOM series folder and write the labels as a DICOM SEG on the series' grid."""
    from medcore.data import load_volume
    from medcore.dicom.seg import write_seg
    from medcore.inferers.predict import predict_volume

    if not source.is_dir():
        raise ValueError(f"{source}: --format seg needs a DICOM series folder (a SEG references its source images)")
    image = load_volume(source)
    labels = predict_volume(model, spec, image, device=device, pre=pre)
    names = {value: name for name, value in spec.labels.items()}
    return write_seg(labels.data[0].numpy(), source, target, names, algorithm=algorithm,
                     affine=image.affine.numpy(), series_description=f"{algorithm.name} v{algorithm.version}")


def run(args: argparse.Namespace) -> int:
    from medcore.dicom.seg import SegAlgorithm
    from medcore.inferers.model_dir import load_model_dir
    from medcore.inferers.predict import build_preprocessing, predict_file

    try:
        device = _device(args.device)
        model, spec = load_model_dir(args.model_dir, device=device)
        if args.tta is not None:
            spec.inference["tta"] = args.tta
        if args.sw_batch_size is not None:
            if args.sw_batch_size < 1:
                raise ValueError(f"--sw-batch-size must be >= 1, got {args.sw_batch_size}")
            spec.inference["sw_batch_size"] = args.sw_batch_size
        pre = build_preprocessing(spec.preprocessing)
        inputs = find_inputs(args.input)
    except (OSError, ValueError) as error:
        print(f"medcore predict: {error}", file=sys.stderr)
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    failures = []
    single = len(inputs) == 1
    for source in tqdm(inputs, desc="predict", unit="volume", disable=args.quiet or single):
        target = args.output_dir / output_name(source, args.format)
        try:
            if args.format == "seg":
                predict_seg(model, spec, source, target, SegAlgorithm(args.model_name, args.model_version),
                            device=device, pre=pre)
            else:
                predict_file(model, spec, source, target, device=device, progress=single and not args.quiet,
                             pre=pre)
            print(f"{source} -> {target}")
        except Exception as error:  # one bad input never stops the batch
            failures.append(source)
            print(f"medcore predict: {source}: {type(error).__name__}: {error}; skipped", file=sys.stderr)
    if failures:
        print(f"medcore predict: {len(failures)} of {len(inputs)} input(s) failed", file=sys.stderr)
        return 1
    return 0
