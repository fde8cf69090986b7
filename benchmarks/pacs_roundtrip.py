"""From a study's arrival in the PACS to its DICOM SEG stored: a 512x512x300 CT and a small MR.

A private Orthanc (``pipelines/orthanc.py``) receives a synthetic study by STOW-RS; the timed part
is what the ``inference`` job does for it (``pipelines/inference.py``): find it (QIDO-RS), retrieve
(WADO-RS) into a temporary folder, convert with the ingestion checks, predict, write the SEG
(highdicom), store it (STOW-RS) and check it is listed. The model is a U-Net with random weights
(``--model tiny``: 4/8 channels, the CPU default; ``unet``: 16-256 channels, the GPU default); its
speed, not its labels, is what counts here. The MR is the synthetic phantom relabelled as MR
(Modality and SOP Class), 256x256x24. Each repeat uses another model version, so every repeat
writes and stores a new SEG.

Run: ``python -m benchmarks.pacs_roundtrip`` (``--quick``: one repeat; ``--small``: a 64x64x30 CT,
for a smoke test). Needs Debian's ``orthanc`` and ``orthanc-dicomweb``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pydicom
import torch

from benchmarks.predict import network_config
from medcore.data.synthetic import LABEL_NAMES, write_synthetic_studies
from medcore.dicom.deid import Deidentifier
from medcore.dicom.web import Pacs, PacsSettings
from medcore.inferers.model_dir import load_model_dir, save_model_dir
from medcore.networks import build_network
from pipelines.inference import Champion, pending_studies, segment_study
from pipelines.orthanc import Orthanc

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
STAGES = ("retrieve", "convert", "predict", "write", "store")


def make_study(root: Path, shape: tuple[int, int, int], modality: str, seed: int) -> list[Path]:
    """One synthetic study (no localizer); relabelled as MR when asked. Returns its files."""
    manifest = write_synthetic_studies(root, n_patients=1, seed=seed, shape=shape, studies_per_patient=(1,),
                                       localizer=False)
    files = sorted((root / manifest.series[0].folder).glob("*.dcm"))
    if modality == "MR":
        for path in files:
            ds = pydicom.dcmread(path)
            ds.Modality, ds.SOPClassUID = "MR", MR_STORAGE
            ds.file_meta.MediaStorageSOPClassUID = MR_STORAGE
            ds.save_as(path, enforce_file_format=True)
    return files


def upload(pacs: Pacs, files: list[Path], batch: int = 32) -> None:
    for i in range(0, len(files), batch):
        pacs.store([pydicom.dcmread(p) for p in files[i:i + batch]])


def roundtrip(pacs: Pacs, deid, model, spec, model_dir: Path, modality: str, version: str, device) -> dict:
    """Seconds of one study's trip: find, then the five stages, and the total."""
    champion = Champion("benchmark", version, model_dir, modality, 8)
    start = time.perf_counter()
    studies = pending_studies(pacs, deid, champion.name, version, modality, 8)
    (study,) = [s for s in studies.values() if not s.done]
    found = time.perf_counter() - start
    outcome = segment_study(pacs, study, champion, model, spec, deid, device=device)
    total = time.perf_counter() - start
    (series,) = outcome.series
    if series.status != "stored":
        raise RuntimeError(f"the study was not stored: {series.status} {series.reason}")
    return {"find": found, **series.seconds, "total": total}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat instead of three")
    parser.add_argument("--small", action="store_true", help="a 64x64x30 CT instead of 512x512x300 (smoke test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", choices=["tiny", "unet"], default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    kind = args.model or ("unet" if device.type == "cuda" else "tiny")
    repeats = 1 if args.quick else 3
    ct_shape = (64, 64, 30) if args.small else (512, 512, 300)
    deid = Deidentifier(os.urandom(32))
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="medcore-bench-pacs-") as tmp, Orthanc() as server:
        root = Path(tmp)
        labels = {name: value for value, name in LABEL_NAMES.items()}
        config = network_config(kind) | {"out_channels": len(labels)}
        net = build_network(config)
        save_model_dir(root / "model", net, inference={"roi_size": [96, 96, 64], "sw_batch_size": 2},
                       labels=labels)
        model, spec = load_model_dir(root / "model", device=device)
        pacs = Pacs(PacsSettings(server.dicomweb_url, timeout=300))
        for name, shape, modality in (("ct", ct_shape, "CT"), ("mr", (256, 256, 24), "MR")):
            upload(pacs, make_study(root / name, shape, modality, seed=len(results)))
            runs = [roundtrip(pacs, deid, model, spec, root / "model", modality, f"{name}-{r}", device)
                    for r in range(repeats)]
            results[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            split = " ".join(f"{k} {results[name][k]:.2f}s" for k in ("find", *STAGES))
            print(f"{name} {'x'.join(map(str, shape))} {modality}: total {results[name]['total']:.2f}s ({split}), "
                  f"median of {repeats}, model {kind} on {device}")
    fields = " ".join(f"{name}_{k}_s={v:.3f}" for name, r in results.items() for k, v in r.items())
    print(f"RESULT ct_shape={'x'.join(map(str, ct_shape))} device={device.type} model={kind} {fields}")


if __name__ == "__main__":
    main()
