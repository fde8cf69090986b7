"""Where one large series spends its conversion time: scan, plan, decode, rescale, write.

    .venv/bin/python -m benchmarks.dicom_stages             # one 512x512x500 CT series (~250 MiB)
    .venv/bin/python -m benchmarks.dicom_stages --quick     # 256x256x64

The series is generated once into ``--workdir`` (default ``/tmp/medcore-bench-stages``). Each stage
runs the same functions ``convert_tree`` runs, in order, from a warm page cache: header scan
(``scan_tree``), grouping and geometry plan, pixel loading (``load_pixels``), rescaling
(``to_real_values`` in place, as ``assemble`` does), and the NIfTI write with its fsync (``.nii``,
then ``.nii.gz`` at level 1). The end-to-end ``convert_tree`` wall time and dcm2niix's on the same
folder close the run. Last line: ``RESULT ...`` with seconds per stage (best of ``--repeat``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _best(fn, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def prepare(workdir: Path, shape: tuple[int, int, int]) -> Path:
    from medcore.data.synthetic import write_synthetic_studies

    data = workdir / ("series-" + "x".join(str(s) for s in shape))
    if not (data / "done").is_file():
        shutil.rmtree(data, ignore_errors=True)
        write_synthetic_studies(data, n_patients=1, shape=shape, studies_per_patient=(1,), localizer=False,
                                overlays=False, progress=True)
        (data / "done").write_text("ok")
    for path in data.rglob("*.dcm"):  # warm page cache
        path.read_bytes()
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/medcore-bench-stages"))
    args = parser.parse_args(argv)

    from medcore.dicom.convert import assemble, convert_tree, plan_for
    from medcore.dicom.decode import load_pixels, to_real_values
    from medcore.dicom.deid import Deidentifier
    from medcore.dicom.group import group_frames, temporal_key
    from medcore.dicom.nifti import write_nifti
    from medcore.dicom.scan import scan_tree
    from medcore.dicom.validate import output_affine

    shape = (256, 256, 64) if args.quick else (512, 512, 500)
    data = prepare(args.workdir, shape)
    out = args.workdir / "out"
    times: dict[str, float] = {}
    times["scan"], scan = _best(lambda: scan_tree(data, workers=1), args.repeat)

    def plan():
        (group,) = group_frames(scan.index)
        frames = [scan.frames[i] for i in group.rows]
        return frames, plan_for(frames, [temporal_key(f) for f in frames])

    times["plan"], (frames, stack_plan) = _best(plan, args.repeat)
    ordered = [frames[i] for i in stack_plan.order.ravel()]
    times["decode"], pixels = _best(lambda: load_pixels(ordered), args.repeat)
    times["rescale"], values = _best(lambda: to_real_values(load_pixels(ordered), ordered, in_place=True), 1)
    times["rescale"] = max(0.0, times["rescale"] - times["decode"])
    stack = values.reshape(stack_plan.n_volumes, stack_plan.n_slices, *values.shape[1:])[0]
    first = ordered[0]
    affine = output_affine(stack_plan, first.iop, first.ipp, first.pixel_spacing)
    out.mkdir(parents=True, exist_ok=True)
    times["write_nii"], _ = _best(lambda: write_nifti(stack, affine, out / "s.nii"), args.repeat)
    times["write_nii_gz"], _ = _best(lambda: write_nifti(stack, affine, out / "s.nii.gz", gzip_level=1),
                                     args.repeat)
    times["assemble"], _ = _best(lambda: assemble(frames, stack_plan), args.repeat)

    def medcore_end_to_end():
        shutil.rmtree(out / "tree", ignore_errors=True)
        convert_tree(data, out / "tree", deid=Deidentifier(b"stages-key-0123456789abcdef"), compress=False,
                     progress=False, workers=1)

    times["convert_tree_nii"], _ = _best(medcore_end_to_end, args.repeat)
    exe = shutil.which("dcm2niix", path=str(Path(sys.executable).parent)) or shutil.which("dcm2niix")
    if exe is not None:
        def dcm2niix():
            shutil.rmtree(out / "d2n", ignore_errors=True)
            (out / "d2n").mkdir(parents=True)
            subprocess.run([exe, "-z", "n", "-b", "y", "-ba", "y", "-f", "%j", "-o", str(out / "d2n"), str(data)],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times["dcm2niix_nii"], _ = _best(dcm2niix, args.repeat)
    mib = pixels.nbytes / 2**20
    print(f"series {shape[0]}x{shape[1]}x{shape[2]} ({mib:.0f} MiB of {pixels.dtype}), best of {args.repeat}:")
    for name, seconds in times.items():
        print(f"  {name:<18} {seconds:7.3f} s")
    print("RESULT " + " ".join(f"{k}_s={v:.3f}" for k, v in times.items()) + f" mib={mib:.0f} quick={int(args.quick)}")


if __name__ == "__main__":
    main()
