"""Segmentation training from a plan: preprocess once into a shared cache, augment, validate, export.

* Preprocessing (orientation, optional resampling, normalisation) uses ``medcore.transforms``; the
  same transform configs go into the exported MODEL_DIR, so ``medcore predict`` sees what training saw.
* The cache is ``medcore.data``'s ``PersistentDataset`` (one content-addressed, checksummed
  safetensors entry per case, shared by runs and the pipeline), built by rank 0 and memory-mapped
  by every rank and loader worker: the OS page cache shares it, nothing is copied per rank.
* Augmentation is a ``Compose`` of ``medcore.transforms`` (:func:`training_transforms`) run in the
  loader workers; it draws from the explicit generator the engine passes (seed, epoch, position),
  so every sample replays from that triple.
* Validation runs sliding-window inference on whole volumes, sharded over ranks, and reduces
  spacing-aware Dice and HD95 (``medcore.metrics``) over all ranks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from medcore.data.persistent import PersistentDataset
from medcore.engine.amp import Precision
from medcore.engine.distributed import DistContext, all_reduce_sum, shard_indices
from medcore.inferers.postprocess import keep_largest_components, largest_component_helps, postprocessing_configs
from medcore.io import Image
from medcore.transforms import (
    Clip,
    Compose,
    Keyed,
    NormalizeIntensity,
    Orientation,
    RandAdjustContrast,
    RandAffine,
    RandCropByPosNegLabel,
    RandFlip,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandScaleIntensity,
    RandScaleIntensityFixedMean,
    RandSimulateLowResolution,
    Spacing,
    from_config,
)


# ---------------------------------------------------------------------------- preprocessing
def preprocessing_configs(plan: dict) -> list[dict]:
    """The deterministic preprocessing as ``medcore.transforms`` configs (Keyed over image and label)."""
    steps = [Keyed(Orientation("RAS"), keys=("image", "label"))]
    if plan["resample"]:
        steps.append(Keyed(Spacing(pixdim=tuple(plan["target_spacing"])), keys=("image", "label"),
                           mode=("bilinear", "nearest")))
    norm = plan["normalization"]
    if norm["kind"] == "ct":
        steps.append(Keyed(Clip(min=norm["clip"][0], max=norm["clip"][1]), keys="image"))
        steps.append(Keyed(NormalizeIntensity(subtrahend=norm["mean"], divisor=norm["std"]), keys="image"))
    else:
        steps.append(Keyed(NormalizeIntensity(), keys="image"))
    return [s.config() for s in steps]


class CasePreprocess:
    """The deterministic preprocessing of one loaded case, as the cacheable prefix of a ``medcore.data``
    dataset: ``{"image": Image, "label": Image, "id"}`` -> ``{"image": (1, X, Y, Z) float32,
    "label": (X, Y, Z) uint8, "id"}`` (compact tensors: what the cache stores and training reads)."""

    is_random = False

    def __init__(self, configs: list[dict]) -> None:
        self.configs = configs
        self.pipeline = from_config(configs)

    def config(self) -> dict:
        return {"name": "CasePreprocess", "steps": self.configs}

    def __call__(self, case: dict, rng: torch.Generator | None = None) -> dict:
        image, label = case["image"], case["label"]
        if tuple(image.spatial_shape) != tuple(label.spatial_shape):
            raise ValueError(f"case {case['id']}: image {tuple(image.spatial_shape)} and label "
                             f"{tuple(label.spatial_shape)} differ in shape; re-export the label on the image grid")
        label = label.replace(data=torch.round(label.data.float()).to(torch.int16))
        out = self.pipeline({"image": image, "label": label})
        return {"image": out["image"].data.float().contiguous(),
                "label": out["label"].data[0].round().clamp(0, 255).to(torch.uint8).contiguous(),
                "id": case["id"]}


def case_dataset(cases: Sequence[dict], configs: list[dict], cache_dir: str | Path,
                 progress: bool = False) -> PersistentDataset:
    """``cases`` (``{"id", "image", "label"}``) as a memory-mapped ``PersistentDataset`` over
    :class:`CasePreprocess`: one content-addressed entry per case in ``cache_dir``, shared by runs,
    ranks and loader workers (input files are hashed here)."""
    return PersistentDataset(cases, CasePreprocess(configs), cache_dir, image_keys=("image", "label"),
                             progress=progress, mmap=True)


class CachedCases:
    """The usable cases of one split, served from a :func:`case_dataset`: ``cases[i] -> {"image",
    "label", "id"}`` (memory-mapped tensors: treat them as read-only). ``skipped`` lists the cases
    that could not be preprocessed, each as ``{"id", "reason"}``."""

    def __init__(self, dataset: PersistentDataset, indices: Sequence[int], skipped: Sequence[dict] = ()) -> None:
        self.dataset, self.indices, self.skipped = dataset, [int(i) for i in indices], list(skipped)

    @property
    def ids(self) -> list[str]:
        return [self.dataset.items[i]["id"] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return dict(self.dataset.prepared(self.indices[i]))


# ---------------------------------------------------------------------------- augmentation
def training_transforms(plan: dict) -> Compose:
    """The training sample pipeline as ``medcore.transforms``, from the plan's ``patch_size``,
    ``foreground_oversample`` and ``augmentation`` (see ``presets.AUGMENTATION``).

    The crop (centred on foreground with probability ``foreground_oversample``), the rotation, the
    scaling and the mirroring are consecutive affine-type steps, so ``Compose`` fuses them into ONE
    resample of the whole volume about the patch centre (image linear, label nearest; zeros outside).
    The intensity steps then act on the image patch only."""
    aug = plan["augmentation"]
    both, image = ("image", "label"), ("image",)
    linear_nearest = ("bilinear", "nearest")  # per key: image, label
    oversample = float(plan["foreground_oversample"])
    scale_lo, scale_hi = aug["scaling"]["range"]
    return Compose([
        Keyed(RandCropByPosNegLabel(tuple(plan["patch_size"]), "label", pos=oversample, neg=1.0 - oversample,
                                    fuse=True), keys=both),
        Keyed(RandAffine(prob=aug["rotation"]["prob"], rotate_range=math.radians(aug["rotation"]["degrees"])),
              keys=both, mode=linear_nearest),
        Keyed(RandAffine(prob=aug["scaling"]["prob"], scale_range=(scale_lo - 1.0, scale_hi - 1.0)),
              keys=both, mode=linear_nearest),
        Keyed(RandFlip(prob=aug["mirror"]["prob"], independent=True), keys=both),
        Keyed(RandGaussianNoise(prob=aug["noise"]["prob"], std=aug["noise"]["std"]), keys=image),
        Keyed(RandGaussianSmooth(prob=aug["blur"]["prob"], sigma_range=tuple(aug["blur"]["sigma"])), keys=image),
        Keyed(RandScaleIntensity(factors=_offsets(aug["brightness"]["range"]), prob=aug["brightness"]["prob"]),
              keys=image),
        Keyed(RandScaleIntensityFixedMean(prob=aug["contrast"]["prob"], factors=_offsets(aug["contrast"]["range"])),
              keys=image),
        Keyed(RandSimulateLowResolution(prob=aug["low_resolution"]["prob"],
                                        zoom_range=tuple(aug["low_resolution"]["zoom"])), keys=image),
        Keyed(RandAdjustContrast(prob=aug["gamma_inverted"]["prob"], gamma=tuple(aug["gamma_inverted"]["range"]),
                                 invert=True, retain_stats=True), keys=image),
        Keyed(RandAdjustContrast(prob=aug["gamma"]["prob"], gamma=tuple(aug["gamma"]["range"]), retain_stats=True),
              keys=image),
    ])


def _offsets(factor_range: Sequence[float]) -> tuple[float, float]:
    """A multiplicative range ``(lo, hi)`` as the ``1 + f`` offsets the transforms draw."""
    return (float(factor_range[0]) - 1.0, float(factor_range[1]) - 1.0)


class TrainingSample:
    """A cached case -> one augmented training sample: ``{"image": (1, *patch) float32,
    "label": (1, *patch) int64}``, drawn from the ``rng`` the engine passes (seed, epoch, position).
    The cached tensors are wrapped as ``Image``s (never modified) and run through ``pipeline``."""

    def __init__(self, pipeline: Compose) -> None:
        self.pipeline = pipeline

    def images(self, item: dict, rng: torch.Generator) -> dict:
        """The augmented sample as ``Image``s, with the ops that replay it."""
        sample = {"image": Image(item["image"]), "label": Image(item["label"][None])}
        return self.pipeline(sample, rng)

    def __call__(self, item: dict, rng: torch.Generator) -> dict:
        out = self.images(item, rng)
        return {"image": out["image"].data.float().contiguous(), "label": out["label"].data.long().contiguous()}


# ---------------------------------------------------------------------------- validation
class SegmentationEvaluator:
    """Sliding-window inference on whole cached volumes; per-class Dice and HD95 (mm), reduced over ranks.
    Also the per-class Dice with only each class's largest connected component kept
    (``val_dice_largest_<class>``), from which training decides the model's post-processing."""

    def __init__(self, cases: CachedCases, plan: dict, progress: bool = False) -> None:
        self.cases, self.plan, self.progress = cases, plan, progress
        self.names = {v: k for k, v in plan["labels"].items() if v > 0}
        self.last_per_case: list[dict] = []

    def predict(
        self, model: torch.nn.Module, image: torch.Tensor, ctx: DistContext, precision: Precision
    ) -> torch.Tensor:
        from medcore.inferers.sliding_window import sliding_window_inference

        inf = self.plan["inference"]
        with precision.autocast():
            logits = sliding_window_inference(image[None].to(ctx.device), inf["roi_size"], model,
                                              overlap=inf["overlap"], mode=inf["mode"],
                                              sw_batch_size=inf["sw_batch_size"])
        return logits.argmax(1)[0].cpu()

    def __call__(self, model: torch.nn.Module, ctx: DistContext, precision: Precision) -> dict[str, float]:
        from medcore.metrics import dice, hausdorff_distance, one_hot

        classes = sorted(self.names)
        n = self.plan["num_classes"]
        # per class: dice sum, dice count, hd95 sum, hd95 count, largest-component dice sum and count
        sums = torch.zeros(len(classes), 6, dtype=torch.float64)
        mine = shard_indices(len(self.cases), ctx)
        self.last_per_case = []
        for i in tqdm(mine, desc="validate", disable=not (self.progress and ctx.is_main), leave=False):
            case = self.cases[i]
            pred = self.predict(model, case["image"], ctx, precision)
            p, r = one_hot(pred[None, None].long(), n), one_hot(case["label"][None, None].long(), n)
            d = dice(p, r)[0]
            hd = hausdorff_distance(p, r, spacing=self.plan["target_spacing"], percentile=95)[0]
            d_largest = dice(one_hot(keep_largest_components(pred)[None, None].long(), n), r)[0]
            row = {"id": case["id"]}
            for j, c in enumerate(classes):
                dv, hv = float(d[c]), float(hd[c])
                row[f"dice_{self.names[c]}"], row[f"hd95_{self.names[c]}"] = dv, hv
                if math.isfinite(dv):
                    sums[j, 0] += dv
                    sums[j, 1] += 1
                if math.isfinite(hv):
                    sums[j, 2] += hv
                    sums[j, 3] += 1
                if math.isfinite(float(d_largest[c])):
                    sums[j, 4] += float(d_largest[c])
                    sums[j, 5] += 1
            self.last_per_case.append(row)
        sums = all_reduce_sum(sums, ctx)
        out: dict[str, float] = {}
        for j, c in enumerate(classes):
            out[f"val_dice_{self.names[c]}"] = (sums[j, 0] / sums[j, 1]).item() if sums[j, 1] else float("nan")
            out[f"val_hd95_{self.names[c]}"] = (sums[j, 2] / sums[j, 3]).item() if sums[j, 3] else float("nan")
            out[f"val_dice_largest_{self.names[c]}"] = (sums[j, 4] / sums[j, 5]).item() if sums[j, 5] else float("nan")
        out["val_dice_mean"] = sum(out[f"val_dice_{self.names[c]}"] for c in classes) / len(classes)
        out["val_hd95_mean"] = sum(out[f"val_hd95_{self.names[c]}"] for c in classes) / len(classes)
        return out


def postprocessing_decision(metrics: dict[str, float], labels: dict[str, int]) -> dict[str, Any]:
    """From the validation metrics of the exported checkpoint: per class, keep only the largest connected
    component when that raised its mean Dice. ``{"keep_largest": [...], "configs": [...], "dice": {...},
    "dice_largest": {...}}``: the configs go into the model directory, the rest into its provenance."""
    names = [name for name, value in labels.items() if value > 0]
    plain = {n: metrics.get(f"val_dice_{n}", math.nan) for n in names}
    largest = {n: metrics.get(f"val_dice_largest_{n}", math.nan) for n in names}
    keep = largest_component_helps(plain, largest)
    return {"keep_largest": keep, "configs": postprocessing_configs(labels, keep), "dice": plain,
            "dice_largest": largest}


# ---------------------------------------------------------------------------- synthetic CT
def make_synthetic_ct(directory: str | Path, num_cases: int = 24, seed: int = 0,
                      shape: Sequence[int] = (48, 48, 24), spacing: Sequence[float] = (1.5, 1.5, 3.0)) -> Path:
    """Write ``num_cases`` CT-like phantoms in the MSD layout (air, body, organ, lesion in HU); idempotent."""
    import numpy as np

    from medcore.io import Image, save_image

    directory = Path(directory)
    if (directory / "imagesTr").is_dir() and len(list((directory / "imagesTr").glob("*.nii.gz"))) >= num_cases:
        return directory
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"), -1)
    extent = np.asarray(shape) * np.asarray(spacing)
    affine = np.diag([*spacing, 1.0])
    for k in range(num_cases):
        def ellipsoid(centre, radii):
            return (((grid - centre) / radii) ** 2).sum(-1) <= 1.0

        body = ellipsoid(extent / 2 + rng.normal(0, 2, 3), extent * rng.uniform(0.38, 0.46, 3))
        organ = ellipsoid(extent / 2 + rng.normal(0, 6, 3) * [1, 1, 0.5], extent * rng.uniform(0.12, 0.2, 3)) & body
        lesion_c = extent / 2 + rng.normal(0, 4, 3) * [1, 1, 0.5]
        lesion = ellipsoid(lesion_c, np.full(3, rng.uniform(3.0, 6.0))) & organ
        hu = np.full(shape, -1000.0)
        hu[body] = rng.normal(20, 5)
        hu[organ] = rng.normal(90, 8)
        hu[lesion] = rng.normal(150, 10)
        hu += rng.normal(0, 25, shape)
        label = np.zeros(shape, np.uint8)
        label[organ], label[lesion] = 1, 2
        name = f"synthct_{k:03d}.nii.gz"
        save_image(Image(torch.from_numpy(hu.astype(np.float32))[None], torch.from_numpy(affine), {}, []),
                   directory / "imagesTr" / name)
        save_image(
            Image(torch.from_numpy(label)[None], torch.from_numpy(affine), {}, []), directory / "labelsTr" / name
        )
    return directory
