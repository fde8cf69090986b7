"""medcore transforms: pure functions (``functional``), array transforms holding parameters, and
ONE generic dict adapter (``Keyed``). See ``base`` for the call convention ``t(x, rng=None)``,
``compose`` for fusion, ``inverse`` for inversion/replay.

Quick start::

    from medcore.transforms import *
    pre = Compose([Keyed(Orientation("RAS")), Keyed(Spacing((1.5, 1.5, 2.0)), mode=("bilinear", "nearest")),
                   Keyed(ScaleIntensityRange(-57, 164, 0, 1, clip=True), keys="image"),
                   Keyed(CropForeground(source="image"))])
    cached, rest = pre.split_deterministic()
    sample = pre({"image": load_image(p), "label": load_image(q)}, rng=make_rng(seed, epoch, index))
    back = invert(prediction, ops=sample["image"].ops, mode="nearest")
    same = from_config(pre.config())
"""

from medcore.transforms.base import REGISTRY, Keyed, Transform, from_config, make_rng, register
from medcore.transforms.compose import Compose, OneOf, RandomOrder
from medcore.transforms.crop_pad import (
    CenterSpatialCrop,
    CropForeground,
    CropPad,
    DivisiblePad,
    ForegroundIndices,
    LabelIndices,
    RandCropByLabelClasses,
    RandCropByPosNegLabel,
    RandSpatialCrop,
    SpatialCrop,
    SpatialPad,
    compute_label_indices,
)
from medcore.transforms.intensity import (
    AdjustContrast,
    BiasField,
    Clip,
    GaussianNoise,
    GaussianSmooth,
    NormalizeIntensity,
    RandAdjustContrast,
    RandBiasField,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandScaleIntensity,
    RandScaleIntensityFixedMean,
    RandShiftIntensity,
    RandSimulateLowResolution,
    ScaleIntensity,
    ScaleIntensityFixedMean,
    ScaleIntensityRange,
    ShiftIntensity,
    SimulateLowResolution,
)
from medcore.transforms.inverse import invert, replay
from medcore.transforms.post import (
    Activations,
    AsDiscrete,
    FillHoles,
    KeepLargestConnectedComponent,
    RemoveSmallObjects,
)
from medcore.transforms.spatial import (
    Affine,
    Elastic,
    Flip,
    Orientation,
    RandAffine,
    RandElastic,
    RandFlip,
    RandRotate90,
    Resample,
    Resize,
    Rotate,
    Rotate90,
    Spacing,
    Zoom,
)

__all__ = [
    "REGISTRY", "Keyed", "Transform", "from_config", "make_rng", "register",
    "Compose", "OneOf", "RandomOrder",
    "CenterSpatialCrop", "CropForeground", "CropPad", "DivisiblePad", "ForegroundIndices", "LabelIndices",
    "RandCropByLabelClasses", "RandCropByPosNegLabel", "RandSpatialCrop", "SpatialCrop", "SpatialPad",
    "compute_label_indices",
    "AdjustContrast", "BiasField", "Clip", "GaussianNoise", "GaussianSmooth", "NormalizeIntensity",
    "RandAdjustContrast", "RandBiasField", "RandGaussianNoise", "RandGaussianSmooth", "RandScaleIntensity",
    "RandScaleIntensityFixedMean", "RandShiftIntensity", "RandSimulateLowResolution", "ScaleIntensity",
    "ScaleIntensityFixedMean", "ScaleIntensityRange", "ShiftIntensity", "SimulateLowResolution",
    "invert", "replay",
    "Activations", "AsDiscrete", "FillHoles", "KeepLargestConnectedComponent", "RemoveSmallObjects",
    "Affine", "Elastic", "Flip", "Orientation", "RandAffine", "RandElastic", "RandFlip", "RandRotate90",
    "Resample", "Resize", "Rotate", "Rotate90", "Spacing", "Zoom",
]
