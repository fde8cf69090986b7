"""Benchmark: the CT preprocessing chain of MONAI issue #7498, medcore vs MONAI 1.6 (and TorchIO
for the transforms it has), on synthetic 512x512xN CT with labels and on the hippocampus set.

Chain: load, Orientation RAS, Spacing 1.5x1.5x2 mm, ScaleIntensityRange(-57, 164 -> 0, 1, clip),
CropForeground, RandCropByPosNegLabel 96^3 x 4 samples, RandFlip, RandRotate90, RandShiftIntensity
(plus SpatialPad to the crop size before the crop, which MONAI needs when a volume is smaller).
Both libraries precompute the crop-sampling label indices at the end of the deterministic prefix
(MONAI: ``FgBgToIndicesd``, its documented speed-up; medcore: ``ForegroundIndices``).
The hippocampus volumes are ~35x50x36 MRI at 1 mm, so there the same chain uses 1 mm spacing,
a 0.5-99.5 percentile intensity window and 32^3 crops.

* uncached epoch: every sample runs the whole chain from the file;
* cached epoch: the deterministic prefix is cached in memory (MONAI ``CacheDataset``; medcore
  ``medcore.data.cache.CacheDataset``, or a list of prefix outputs if that is missing) and only
  the random part runs;
* cache_bytes_ratio: bytes the medcore cache holds (unique tensor storages, label indices
  included) / raw bytes of the cached image+label arrays.

Run: ``python -m benchmarks.transforms [--quick] [--threads N]``. Last line: ``RESULT ...``
(the headline keys are the MINIMUM over the two data sets; per-set keys follow).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from tqdm import tqdm

from medcore.io import Image, load_image
from medcore.transforms import (
    Compose,
    CropForeground,
    ForegroundIndices,
    Keyed,
    LabelIndices,
    Orientation,
    RandCropByPosNegLabel,
    RandFlip,
    RandRotate90,
    RandShiftIntensity,
    ScaleIntensityRange,
    Spacing,
    SpatialPad,
    make_rng,
)

ROOT = Path(__file__).resolve().parents[1]


# --- data ------------------------------------------------------------------------------------
def make_ct(folder: Path, n: int, slices: int, seed: int = 0) -> list[dict]:
    """Synthetic abdominal-CT-like volumes: air, an elliptic body (soft tissue + noise), a 'liver'
    (label 1) and a 'tumour' (label 2); 0.7x0.7x2.5 mm, LPS-like axes (so Orientation works)."""
    rng = np.random.default_rng(seed)
    items = []
    x, y = np.meshgrid(np.arange(512), np.arange(512), indexing="ij")
    z = np.arange(slices)
    for i in tqdm(range(n), desc="synthetic CT", leave=False):
        cx, cy = 256 + rng.integers(-20, 20), 256 + rng.integers(-20, 20)
        body = ((x - cx) / 200.0) ** 2 + ((y - cy) / 150.0) ** 2 < 1
        vol = np.full((512, 512, slices), -1000, dtype=np.float32)
        vol[body] = 40
        lab = np.zeros((512, 512, slices), dtype=np.uint8)
        lx, ly, lz = cx + 60, cy - 20, slices // 2 + rng.integers(-5, 5)
        liver = (((x - lx) / 80.0) ** 2 + ((y - ly) / 60.0) ** 2)[..., None] + ((z - lz) / (slices / 3.0)) ** 2 < 1
        vol[liver] = 60
        lab[liver] = 1
        tumour = (((x - lx - 20) / 15.0) ** 2 + ((y - ly) / 15.0) ** 2)[..., None] + ((z - lz) / 6.0) ** 2 < 1
        vol[tumour] = 100
        lab[tumour] = 2
        vol += rng.normal(0, 15, vol.shape).astype(np.float32) * body[..., None]
        affine = np.array([[-0.7, 0, 0, 180.0], [0, -0.7, 0, 170.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])
        ip, lp = folder / f"ct_{i:03d}.nii.gz", folder / f"ct_{i:03d}_seg.nii.gz"
        for arr, p in ((vol.astype(np.int16), ip), (lab, lp)):
            nii = nib.Nifti1Image(arr, affine)
            nii.header.set_qform(affine, 1)
            nii.header.set_sform(affine, 1)
            nib.save(nii, str(p))
        items.append({"image": str(ip), "label": str(lp)})
    return items


def hippocampus_items(n: int) -> list[dict]:
    root = Path(os.environ.get("MEDCORE_TEST_DATA", ROOT.parent / "shared" / "data")) / "hippocampus"
    images = sorted((root / "imagesTr").glob("hippocampus_*.nii.gz"))[:n]
    return [{"image": str(p), "label": str(root / "labelsTr" / p.name)} for p in images]


# --- the chains ------------------------------------------------------------------------------
def params(kind: str) -> dict:
    if kind == "ct":
        return {"pixdim": (1.5, 1.5, 2.0), "roi": (96, 96, 96), "a_min": -57.0, "a_max": 164.0, "percentiles": False}
    return {"pixdim": (1.0, 1.0, 1.0), "roi": (32, 32, 32), "a_min": 0.5, "a_max": 99.5, "percentiles": True}


def medcore_chain(kind: str) -> Compose:
    p = params(kind)
    return Compose(
        [
            Keyed(Orientation("RAS")),
            Keyed(Spacing(p["pixdim"]), mode=("bilinear", "nearest")),
            Keyed(
                ScaleIntensityRange(p["a_min"], p["a_max"], 0.0, 1.0, clip=True, percentiles=p["percentiles"]),
                keys="image",
            ),
            Keyed(CropForeground(source="image")),
            Keyed(SpatialPad(p["roi"])),
            ForegroundIndices("label"),
            Keyed(RandCropByPosNegLabel(p["roi"], pos=1, neg=1, num_samples=4)),
            Keyed(RandFlip(prob=0.5, axes=(0,))),
            Keyed(RandRotate90(prob=0.5, max_k=3)),
            Keyed(RandShiftIntensity(0.1, prob=0.5), keys="image"),
        ]
    )


def medcore_load(item: dict) -> dict:
    return {"image": load_image(item["image"]), "label": load_image(item["label"])}


def monai_chain(kind: str):
    import monai.transforms as mt

    p = params(kind)
    k = ["image", "label"]
    intensity = (mt.ScaleIntensityRangePercentilesd("image", p["a_min"], p["a_max"], 0.0, 1.0, clip=True)
                 if p["percentiles"] else mt.ScaleIntensityRanged("image", p["a_min"], p["a_max"], 0.0, 1.0, clip=True))
    c = mt.Compose([
        mt.LoadImaged(k, image_only=True),
        mt.EnsureChannelFirstd(k),
        mt.Orientationd(k, axcodes="RAS"),
        mt.Spacingd(k, pixdim=p["pixdim"], mode=("bilinear", "nearest")),
        intensity,
        mt.CropForegroundd(k, source_key="image", allow_smaller=True),
        mt.SpatialPadd(k, p["roi"]),
        mt.FgBgToIndicesd("label"),
        mt.RandCropByPosNegLabeld(k, "label", p["roi"], pos=1, neg=1, num_samples=4,
                                  fg_indices_key="label_fg_indices", bg_indices_key="label_bg_indices"),
        mt.RandFlipd(k, prob=0.5, spatial_axis=0),
        mt.RandRotate90d(k, prob=0.5, max_k=3),
        mt.RandShiftIntensityd("image", offsets=0.1, prob=0.5),
    ])
    c.set_random_state(seed=0)
    return c


def torchio_chain(kind: str):
    """TorchIO has orientation, resampling, rescaling, foreground crop-or-pad, flips and a label
    patch sampler; it has no rot90 and no shift-intensity, so those are left out of its chain."""
    import torchio as tio

    p = params(kind)
    rescale = (tio.RescaleIntensity((0, 1), percentiles=(p["a_min"], p["a_max"])) if p["percentiles"]
               else tio.RescaleIntensity((0, 1), in_min_max=(p["a_min"], p["a_max"])))
    pre = tio.Compose([tio.ToCanonical(), tio.Resample(p["pixdim"]), rescale, tio.Clamp(0, 1)])
    return (
        pre,
        tio.LabelSampler(p["roi"], label_name="label", label_probabilities={0: 1, 1: 1}),
        tio.RandomFlip(axes=(0,), flip_probability=0.5),
    )


def run_torchio(items, kind: str) -> float:
    import torchio as tio

    pre, sampler, flip = torchio_chain(kind)
    t0 = time.perf_counter()
    n = 0
    for it in tqdm(items, desc=f"torchio {kind}", leave=False):
        subj = tio.Subject(image=tio.ScalarImage(it["image"]), label=tio.LabelMap(it["label"]))
        subj = pre(subj)
        bbox = subj["image"].data[0] > 0
        idx = [torch.nonzero(bbox.any(dim=tuple(j for j in range(3) if j != a))).flatten() for a in range(3)]
        crop = [(int(i[0]), int(subj["image"].shape[a + 1] - 1 - i[-1])) for a, i in enumerate(idx)]
        subj = tio.Crop(tuple(v for pair in crop for v in pair))(subj)
        subj = tio.CropOrPad([max(s, r) for s, r in zip(subj["image"].shape[1:], params(kind)["roi"])])(subj)
        for patch in sampler(subj, num_patches=4):
            flip(patch)
            n += 1
    return n / (time.perf_counter() - t0)


# --- measurement -----------------------------------------------------------------------------
def storage_bytes(obj, seen: set) -> int:
    if isinstance(obj, torch.Tensor):
        st = obj.untyped_storage()
        key = st.data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return st.nbytes()
    if isinstance(obj, Image):
        return storage_bytes(obj.data, seen) + storage_bytes(obj.affine, seen)
    if isinstance(obj, LabelIndices):
        return sum(storage_bytes(v, seen) for v in obj.classes.values())
    if isinstance(obj, dict):
        return sum(storage_bytes(v, seen) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(storage_bytes(v, seen) for v in obj)
    return 0


def medcore_cache(chain: Compose, items: list[dict]):
    """``(cached prefix outputs, get(epoch, index) -> samples, how)``: the datasets engineer's
    ``medcore.data.cache.CacheDataset`` when importable, else a plain list of prefix outputs."""
    try:
        from medcore.data.cache import CacheDataset
    except ImportError:
        prefix, rest = chain.split_deterministic()
        cache = [prefix(medcore_load(it)) for it in tqdm(items, desc="medcore cache", leave=False)]
        return cache, (lambda ep, i: rest(cache[i], make_rng(0, ep, i))), "list"
    ds = CacheDataset(items, transform=chain, seed=0, progress=False)
    return [ds.prepared(i) for i in range(len(items))], (lambda ep, i: ds[(ep, i)]), "medcore.data.cache.CacheDataset"


def bench(items: list[dict], kind: str, epochs: int, torchio: bool) -> dict:
    """Interleaved timing (medcore, then MONAI, per item) so machine load hits both alike."""
    import monai
    from monai.data import CacheDataset as MonaiCache

    res: dict = {}
    chain = medcore_chain(kind)
    mc = monai_chain(kind)
    t_ours = t_monai = 0.0
    n_ours = n_monai = 0
    for i, it in enumerate(tqdm(items, desc=f"{kind} uncached", leave=False)):
        t0 = time.perf_counter()
        n_ours += len(chain(medcore_load(it), make_rng(0, 0, i)))
        t1 = time.perf_counter()
        n_monai += len(mc(dict(it)))
        t2 = time.perf_counter()
        t_ours += t1 - t0
        t_monai += t2 - t1
    res["medcore_uncached"] = n_ours / t_ours
    res["monai_uncached"] = n_monai / t_monai

    cache, get, how = medcore_cache(chain, items)
    res["cache_impl"] = how
    raw = sum(
        c["image"].data.numel() * c["image"].data.element_size()
        + c["label"].data.numel() * c["label"].data.element_size()
        for c in cache
    )
    res["cache_bytes_ratio"] = storage_bytes(cache, set()) / raw
    monai.utils.set_determinism(0)
    ds = MonaiCache(
        [dict(it) for it in items], transform=monai_chain(kind), cache_rate=1.0, num_workers=0, progress=False
    )
    t_ours = t_monai = 0.0
    n_ours = n_monai = 0
    for ep in range(epochs):
        for i in range(len(cache)):
            t0 = time.perf_counter()
            n_ours += len(get(ep + 1, i))
            t1 = time.perf_counter()
            n_monai += len(ds[i])
            t2 = time.perf_counter()
            t_ours += t1 - t0
            t_monai += t2 - t1
    res["medcore_cached"] = n_ours / t_ours
    res["monai_cached"] = n_monai / t_monai
    if torchio:
        res["torchio_uncached"] = run_torchio(items, kind)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", default=os.environ.get("MEDCORE_BENCH_QUICK") == "1",
                    help="smaller run (also MEDCORE_BENCH_QUICK=1)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for both libraries")
    ap.add_argument("--no-torchio", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    n_ct, slices, n_hip, epochs = (3, 96, 12, 2) if args.quick else (6, 160, 40, 3)
    results = {}
    with tempfile.TemporaryDirectory(prefix="medcore_bench_") as tmp:
        ct_items = make_ct(Path(tmp), n_ct, slices)
        results["ct"] = bench(ct_items, "ct", epochs, not args.no_torchio)
    hip = hippocampus_items(n_hip)
    if hip:
        results["hippocampus"] = bench(hip, "hippocampus", epochs, not args.no_torchio)
    print(f"machine: {os.cpu_count()} CPUs, torch threads {args.threads}, torch {torch.__version__}")
    keys = {}
    for name, r in results.items():
        up = r["medcore_uncached"] / r["monai_uncached"]
        cp = r["medcore_cached"] / r["monai_cached"]
        print(
            f"{name}: samples/s uncached medcore {r['medcore_uncached']:.2f} vs MONAI {r['monai_uncached']:.2f} "
            f"-> {up:.2f}x; cached medcore {r['medcore_cached']:.2f} vs MONAI {r['monai_cached']:.2f} -> {cp:.2f}x; "
            f"cache bytes ratio {r['cache_bytes_ratio']:.3f} ({r['cache_impl']})"
            + (
                f"; TorchIO uncached {r['torchio_uncached']:.2f} "
                f"-> {r['medcore_uncached'] / r['torchio_uncached']:.2f}x"
                if "torchio_uncached" in r
                else ""
            )
        )
        keys[f"{name}_uncached"] = up
        keys[f"{name}_cached"] = cp
        keys[f"{name}_cache_bytes_ratio"] = r["cache_bytes_ratio"]
        if "torchio_uncached" in r:
            keys[f"{name}_vs_torchio_uncached"] = r["medcore_uncached"] / r["torchio_uncached"]
    head_up = min(v for k, v in keys.items() if k.endswith("_uncached") and "torchio" not in k)
    head_cp = min(v for k, v in keys.items() if k.endswith("_cached") and "uncached" not in k)
    head_bytes = max(v for k, v in keys.items() if k.endswith("cache_bytes_ratio"))
    extra = " ".join(f"{k}={v:.3f}" for k, v in keys.items())
    print(f"RESULT speedup_vs_monai_uncached={head_up:.2f} speedup_vs_monai_cached={head_cp:.2f} "
          f"cache_bytes_ratio={head_bytes:.3f} {extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
