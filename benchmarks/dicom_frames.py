"""DICOM header and pixel reading: medcore.dicom.reader and decode against pydicom and SimpleITK.

    .venv/bin/python -m benchmarks.dicom_frames            # 2000 CT slices of 512x512 (4 series)
    .venv/bin/python -m benchmarks.dicom_frames --quick    # 400 slices

Synthetic CT slices (explicit VR little endian, int16 with RescaleIntercept -1024, a realistic
header with a large private block) are written once to ``--workdir``. All tools read the same
files from a warm page cache in this process:
- header: medcore ``read_frames`` vs ``pydicom.dcmread(stop_before_pixels=True)`` vs SimpleITK
  ``ImageFileReader.ReadImageInformation``;
- pixels: medcore ``read_frames`` + ``load_pixels`` + ``to_real_values`` per series vs
  ``pydicom.dcmread`` + ``pixel_array`` + rescale vs SimpleITK ``ReadImage`` of the series;
- compressed: the 9 transfer syntaxes of ``dcm_qa_ts`` (when the shared data is present),
  medcore vs pydicom's own ``pixel_array``.
A speedup is the peer's time over medcore's. Last line: ``RESULT ...``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np


def _say(msg: str) -> None:
    print(msg, flush=True)


def write_slices(workdir: Path, n_slices: int, n_series: int = 4, size: int = 512) -> list[list[Path]]:
    """``n_series`` folders of synthetic CT slices; reused when already present."""
    from pydicom.uid import generate_uid

    from medcore.data.synthetic import new_dicom_dataset

    per = n_slices // n_series
    series_paths: list[list[Path]] = []
    rng = np.random.default_rng(0)
    base_img = (rng.normal(1024, 200, (size, size))).clip(0, 4095).astype(np.int16)
    for s in range(n_series):
        folder = workdir / f"series_v2_{s}_{per}_{size}"
        paths = [folder / f"{i:05d}.dcm" for i in range(per)]
        series_paths.append(paths)
        if all(p.is_file() for p in paths):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        study, series = generate_uid(), generate_uid()
        for i, path in enumerate(paths):
            ds = new_dicom_dataset("1.2.840.10008.5.1.4.1.1.2")
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", s + 1, i + 1
            ds.PatientName, ds.PatientID, ds.StudyDate = "Bench^Mark", "BENCH", "20240101"
            ds.Manufacturer, ds.ManufacturerModelName, ds.KVP = "ACME", "Scanner 9000", 120
            ds.ConvolutionKernel, ds.SliceThickness = "STANDARD", 1.0
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.ImagePositionPatient = [-250.0, -250.0, float(i)]
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.PixelSpacing = [0.9765625, 0.9765625]
            ds.Rows = ds.Columns = size
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
            ds.add_new((0x0009, 0x0010), "LO", "ACME PRIVATE")
            ds.add_new((0x0009, 0x1001), "OB", bytes(6000))  # vendor blob, like a CSA header
            ds.PixelData = np.roll(base_img, i, axis=0).tobytes()
            ds.save_as(path, enforce_file_format=True)
    return series_paths


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_headers(files: list[Path], repeats: int) -> dict:
    import pydicom
    import SimpleITK as sitk

    from medcore.dicom.reader import read_frames

    def ours():
        for p in files:
            read_frames(p)

    def pyd():
        for p in files:
            pydicom.dcmread(p, stop_before_pixels=True)

    def itk():
        reader = sitk.ImageFileReader()
        for p in files:
            reader.SetFileName(str(p))
            reader.ReadImageInformation()

    t = {"medcore": _best(ours, repeats), "pydicom": _best(pyd, repeats), "sitk": _best(itk, repeats)}
    cpu0 = time.process_time()
    ours()
    t["medcore_cpu"] = time.process_time() - cpu0
    return t


def bench_pixels(series: list[list[Path]], repeats: int) -> tuple[dict, bool]:
    import pydicom
    import SimpleITK as sitk

    from medcore.dicom.decode import load_pixels, to_real_values
    from medcore.dicom.reader import read_frames

    results = {}

    def ours():
        out = []
        for paths in series:
            frames = [f for p in paths for f in read_frames(p)]
            out.append(to_real_values(load_pixels(frames), frames))
        results["medcore"] = out

    def pyd():
        out = []
        for paths in series:
            vols = []
            for p in paths:
                ds = pydicom.dcmread(p)
                vols.append(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
            out.append(np.stack(vols))
        results["pydicom"] = out

    def itk():
        out = []
        for paths in series:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames([str(p) for p in paths])
            out.append(sitk.GetArrayFromImage(reader.Execute()))
        results["sitk"] = out

    t = {"medcore": _best(ours, repeats), "pydicom": _best(pyd, repeats), "sitk": _best(itk, repeats)}
    same = all(np.array_equal(a, b) for a, b in zip(results["medcore"], results["pydicom"]))
    # SimpleITK sorts slices along the normal itself: positions here increase with the file order.
    same = same and all(np.array_equal(a, b) for a, b in zip(results["medcore"], results["sitk"]))
    return t, same


def bench_compressed(repeats: int) -> dict | None:
    import pydicom

    from medcore.dicom.decode import load_pixels
    from medcore.dicom.reader import read_frames

    root = Path(os.environ.get("MEDCORE_TEST_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    files = sorted((root / "dicom" / "dcm_qa_ts" / "In").glob("*.dcm"))
    if not files:
        return None

    def ours():
        for p in files:
            load_pixels(read_frames(p))

    def pyd():
        for p in files:
            _ = pydicom.dcmread(p).pixel_array

    return {"medcore": _best(ours, repeats), "pydicom": _best(pyd, repeats)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="400 slices instead of 2000")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/medcore-bench-frames"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    n = 400 if args.quick or os.environ.get("MEDCORE_BENCH_QUICK") else 2000
    _say(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus")
    t0 = time.perf_counter()
    series = write_slices(args.workdir, n)
    files = [p for s in series for p in s]
    _say(f"{len(files)} slices of 512x512 in {len(series)} series ready ({time.perf_counter() - t0:.1f} s)")
    for p in files:  # warm the page cache for every tool
        p.read_bytes()

    h = bench_headers(files, args.repeats)
    fps = len(files) / h["medcore"]
    fps_cpu = len(files) / max(h["medcore_cpu"], 1e-9)
    _say(f"header  medcore {h['medcore']:.3f} s ({fps:.0f} files/s wall, {fps_cpu:.0f} files/s per CPU s) | "
         f"pydicom {h['pydicom']:.3f} s ({h['pydicom'] / h['medcore']:.2f}x) | "
         f"SimpleITK {h['sitk']:.3f} s ({h['sitk'] / h['medcore']:.2f}x)")
    p, same = bench_pixels(series, args.repeats)
    _say(f"pixels  medcore {p['medcore']:.3f} s | pydicom {p['pydicom']:.3f} s ({p['pydicom'] / p['medcore']:.2f}x) | "
         f"SimpleITK {p['sitk']:.3f} s ({p['sitk'] / p['medcore']:.2f}x) | identical volumes: {same}")
    c = bench_compressed(args.repeats)
    comp = "n/a"
    if c is not None:
        comp = f"{c['pydicom'] / c['medcore']:.2f}"
        _say(f"dcm_qa_ts 9 syntaxes  medcore {c['medcore']:.3f} s | pydicom {c['pydicom']:.3f} s ({comp}x)")
    _say(
        f"RESULT header_files_per_s={fps:.0f} header_files_per_cpu_s={fps_cpu:.0f} "
        f"header_speedup_vs_pydicom={h['pydicom'] / h['medcore']:.2f} "
        f"header_speedup_vs_sitk={h['sitk'] / h['medcore']:.2f} "
        f"pixel_speedup_vs_pydicom={p['pydicom'] / p['medcore']:.2f} "
        f"pixel_speedup_vs_sitk={p['sitk'] / p['medcore']:.2f} compressed_speedup_vs_pydicom={comp} "
        f"identical={same}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
