"""Pure functions behind every transform: ``spatial`` (voxel maps, resample, blur), ``crop_pad``,
``intensity``. They take and return tensors/arrays and never record anything."""

from medcore.transforms.functional import crop_pad, intensity, spatial

__all__ = ["crop_pad", "intensity", "spatial"]
