"""Segmentation training from a plan: preprocess once into a shared cache, augment, validate, export.

* Preprocessing (orientation, optional resampling, normalisation) uses ``medcore.transforms``; the
  same transform configs go into the exported MODEL_DIR, so ``medcore predict`` sees what training saw.
* The cache is ``medcore.data``'s ``PersistentDataset`` (one content-addressed, checksummed
  safetensors entry per case, shared by runs and the pipeline), built by rank 0 and memory-mapped
  by every rank and loader worker: the OS page cache shares it, nothing is copied per rank.
* Augmentation draws from the explicit generator the engine passes (seed, epoch, position).
* Validation runs sliding-window inference on whole volumes, sharded over ranks, and reduces
  spacing-aware Dice and HD95 (``medcore.metrics``) over all ranks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from medcore.data.persistent import PersistentDataset
from medcore.engine.amp import Precision
from medcore.engine.distributed import DistContext, all_reduce_sum, shard_indices


# ---------------------------------------------------------------------------- preprocessing
def preprocessing_configs(plan: dict) -> list[dict]:
    """The deterministic preprocessing as ``medcore.transforms`` configs (Keyed over image and label)."""
    from medcore.transforms import Clip, Keyed, NormalizeIntensity, Orientation, Spacing

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
        from medcore.transforms import from_config

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
class PatchAugment:
    """Pad to the patch, crop (foreground-centred with probability ``oversample``), with probability
    ``spatial_prob`` rotate (up to ``rotate_deg`` about each axis) and zoom (``zoom`` range) the crop
    about its centre, flip, and jitter intensities; all draws come from the generator the engine passes."""

    def __init__(self, patch: Sequence[int], oversample: float = 0.33, flip_prob: float = 0.5,
                 scale_prob: float = 0.2, noise_prob: float = 0.15, spatial_prob: float = 0.0,
                 rotate_deg: float = 15.0, zoom: Sequence[float] = (0.85, 1.25)) -> None:
        self.patch, self.oversample = [int(p) for p in patch], float(oversample)
        self.flip_prob, self.scale_prob, self.noise_prob = flip_prob, scale_prob, noise_prob
        self.spatial_prob, self.rotate_deg, self.zoom = float(spatial_prob), float(rotate_deg), tuple(zoom)

    def _rotate_zoom(self, image: torch.Tensor, label: torch.Tensor, start: Sequence[int],
                     rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Resample the patch at ``start`` from the whole volume, rotated and zoomed about its centre
        (image: linear, border values; label: nearest, background outside)."""
        angles = (2 * torch.rand(3, generator=rng, dtype=torch.float64) - 1) * math.radians(self.rotate_deg)
        zoom = self.zoom[0] + (self.zoom[1] - self.zoom[0]) * torch.rand((), generator=rng, dtype=torch.float64)
        rotation = torch.eye(3, dtype=torch.float64)
        for axis, angle in enumerate(angles.tolist()):
            i, j = [a for a in range(3) if a != axis]
            r = torch.eye(3, dtype=torch.float64)
            r[i, i], r[i, j], r[j, i], r[j, j] = math.cos(angle), -math.sin(angle), math.sin(angle), math.cos(angle)
            rotation = r @ rotation
        offsets = torch.stack(torch.meshgrid(*[torch.arange(p, dtype=torch.float64) - (p - 1) / 2 for p in self.patch],
                                             indexing="ij"), -1)
        centre = torch.tensor([s + (p - 1) / 2 for s, p in zip(start, self.patch)], dtype=torch.float64)
        points = centre + offsets @ (rotation * zoom).T  # voxel coordinates in the volume, (*patch, 3)
        size = torch.tensor(label.shape, dtype=torch.float64)
        grid = (2 * points / (size - 1).clamp(min=1) - 1).flip(-1)[None].float()  # grid_sample wants (x=W, y=H, z=D)
        image = F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
        label = F.grid_sample(label[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                              align_corners=True)[0, 0].to(label.dtype)
        return image, label

    def _start(self, shape: Sequence[int], label: torch.Tensor, rng: torch.Generator) -> list[int]:
        slack = [s - p for s, p in zip(shape, self.patch)]
        if torch.rand((), generator=rng).item() < self.oversample:
            classes = [c for c in label.unique().tolist() if c > 0]
            if classes:
                c = classes[int(torch.randint(len(classes), (), generator=rng))]
                voxels = (label == c).nonzero()
                centre = voxels[int(torch.randint(len(voxels), (), generator=rng))].tolist()
                return [min(max(0, v - p // 2), s) for v, p, s in zip(centre, self.patch, slack)]
        return [int(torch.randint(s + 1, (), generator=rng)) for s in slack]

    def __call__(self, item: dict, rng: torch.Generator) -> dict:
        image, label = item["image"], item["label"]
        pad = [max(0, p - s) for p, s in zip(self.patch, label.shape)]
        if any(pad):
            before = [int(torch.randint(q + 1, (), generator=rng)) for q in pad]
            flat = [v for b, q in zip(reversed(before), reversed(pad)) for v in (b, q - b)]
            image, label = F.pad(image, flat), F.pad(label, flat)
        start = self._start(label.shape, label, rng)
        if self.spatial_prob and torch.rand((), generator=rng).item() < self.spatial_prob:
            image, label = self._rotate_zoom(image, label, start, rng)
        else:
            box = tuple(slice(s, s + p) for s, p in zip(start, self.patch))
            image, label = image[(slice(None), *box)], label[box]
        flips = [d for d in range(3) if torch.rand((), generator=rng).item() < self.flip_prob]
        if flips:
            image, label = image.flip([d + 1 for d in flips]), label.flip(flips)
        if torch.rand((), generator=rng).item() < self.scale_prob:
            image = image * (0.75 + 0.5 * torch.rand((), generator=rng)) + 0.2 * (torch.rand((), generator=rng) - 0.5)
        if torch.rand((), generator=rng).item() < self.noise_prob:
            image = image + 0.1 * torch.rand((), generator=rng) * torch.randn(image.shape, generator=rng)
        return {"image": image.contiguous().float(), "label": label[None].long().contiguous()}


# ---------------------------------------------------------------------------- validation
class SegmentationEvaluator:
    """Sliding-window inference on whole cached volumes; per-class Dice and HD95 (mm), reduced over ranks."""

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
        # per class: dice sum, dice count, hd95 sum, hd95 count
        sums = torch.zeros(len(classes), 4, dtype=torch.float64)
        mine = shard_indices(len(self.cases), ctx)
        self.last_per_case = []
        for i in tqdm(mine, desc="validate", disable=not (self.progress and ctx.is_main), leave=False):
            case = self.cases[i]
            pred = self.predict(model, case["image"], ctx, precision)
            p, r = one_hot(pred[None, None].long(), n), one_hot(case["label"][None, None].long(), n)
            d = dice(p, r)[0]
            hd = hausdorff_distance(p, r, spacing=self.plan["target_spacing"], percentile=95)[0]
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
            self.last_per_case.append(row)
        sums = all_reduce_sum(sums, ctx)
        out: dict[str, float] = {}
        for j, c in enumerate(classes):
            out[f"val_dice_{self.names[c]}"] = (sums[j, 0] / sums[j, 1]).item() if sums[j, 1] else float("nan")
            out[f"val_hd95_{self.names[c]}"] = (sums[j, 2] / sums[j, 3]).item() if sums[j, 3] else float("nan")
        out["val_dice_mean"] = sum(out[f"val_dice_{self.names[c]}"] for c in classes) / len(classes)
        out["val_hd95_mean"] = sum(out[f"val_hd95_{self.names[c]}"] for c in classes) / len(classes)
        return out


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
