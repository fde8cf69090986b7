"""What each step returns: small frozen dataclasses, read by attribute by the Dagster assets, by
``python -m pipelines STAGE`` (DVC) and by the tests.

:func:`to_json` is the one way to turn a result into JSON-ready data (files, metadata, stdout);
:func:`from_json` reads back the results that steps store as files (``save``/``load``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from medcore.utils.atomic import atomic_write_text

R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class RawStudy:
    """``raw_dicom``: one inbox study as received (counted and hashed, never copied)."""

    study: str
    files: int
    bytes: int
    content_hash: str


@dataclasses.dataclass(frozen=True)
class StudyIndex:
    """``series_index``: the de-identified header index of one study."""

    study: str
    files: int
    frames: int
    series: int
    skipped_files: int
    index: str


@dataclasses.dataclass(frozen=True)
class SeriesWritten:
    """One converted series: its de-identified id, NIfTI file name, shape and voxel size."""

    series_id: str
    nifti: str
    shape: tuple[int, ...]
    voxel_size: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class ConvertedStudy:
    """``nifti_volumes``: conversion of one study; ``quarantine`` counts refused files by reason code."""

    study: str
    series_written: int
    stacks_refused: int
    files_in: int
    files_converted: int
    files_quarantined: int
    quarantine: dict[str, int]
    segmentation_objects: int
    series: tuple[SeriesWritten, ...]


@dataclasses.dataclass(frozen=True)
class Misaligned:
    """A label that could not be placed on its series' grid, and why (no path, no SEG free text)."""

    series_id: str
    source: str
    reason: str


@dataclasses.dataclass(frozen=True)
class StudyLabels:
    """``labels``: label maps matched to one study's series; ``sources`` counts them by kind (nifti, seg)."""

    study: str
    labelled_series: int
    misaligned: tuple[Misaligned, ...]
    label_names: dict[str, str]
    sources: dict[str, int]
    unmatched_seg_files: int


@dataclasses.dataclass(frozen=True)
class DatasetVersion:
    """``training_dataset``: one assembled dataset version (``dataset_version.json``); patients are split
    into train and test by a keyed hash of their pseudonym."""

    dataset_hash: str
    cases: int
    studies: tuple[str, ...]
    label_names: dict[str, str]
    modality: str
    train_patients: int
    test_patients: int
    test_cases: int


@dataclasses.dataclass(frozen=True)
class DvcTracking:
    """The dataset's ``.dvc`` file (relative to the project root) and DVC's directory hash."""

    dvc_file: str
    dvc_md5: str
    dvc_files: int


@dataclasses.dataclass(frozen=True)
class CacheInfo:
    """``preprocessed_cache``: the preprocessing cache of one dataset version and plan."""

    cache_key: str
    train_cases: int
    val_cases: int
    skipped: tuple[str, ...]
    files: tuple[str, ...]
    bytes: int


@dataclasses.dataclass(frozen=True)
class TrainingDecision:
    """What to do, and why: ``action`` is ``train``, ``reuse`` (a finished training, not yet registered) or
    ``skip`` (registered already: nothing downstream runs); ``reason`` is shown in the Dagster log and by DVC."""

    action: str
    run_key: str
    reason: str
    version: str | None  # the registered version of this training, if any


@dataclasses.dataclass(frozen=True)
class TrainingJob:
    """A prepared training: the torchrun command, its environment and the run folder."""

    run_key: str
    run_dir: str
    command: tuple[str, ...]
    env: dict[str, str]
    nproc: int


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """``trained_model``: the latest finished training (``train/latest.json``); paths relative to the output."""

    run_key: str
    run_dir: str
    model_dir: str
    best_score: float | None
    best_epoch: int | None
    epochs: int | None
    validation: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """``evaluation``: mean foreground Dice (over classes), per class, on ``evaluation_set``."""

    mean_dice: float
    class_dice: dict[str, float]
    cases: int
    evaluation_set: str
    run_key: str
    plots: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Bootstrap:
    """A paired bootstrap of (candidate - champion) per-case mean Dice over the shared test cases."""

    cases: int
    mean_difference: float
    lower: float  # 2.5th percentile of the resampled mean differences
    upper: float  # 97.5th percentile
    samples: int
    champion_rescored: bool  # the champion was scored anew on this test set (it was scored on another)


@dataclasses.dataclass(frozen=True)
class Registration:
    """``registered_model``: the MLflow model version, its alias and why; ``lineage`` is its tags."""

    model_name: str
    version: str
    alias: str
    reason: str
    model_uri: str
    tracking_uri: str
    run_id: str
    source: str
    artifact_root: str
    lineage: dict[str, str]
    statistic: Bootstrap | None  # None when there was no champion to compare with


def to_json(result: object) -> Any:
    """``result`` (a step result, or lists/dicts of them) as JSON-ready data: dicts, lists, str, numbers."""
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return {f.name: to_json(getattr(result, f.name)) for f in dataclasses.fields(result)}
    if isinstance(result, Mapping):
        return {str(k): to_json(v) for k, v in result.items()}
    if isinstance(result, (list, tuple)):
        return [to_json(v) for v in result]
    if isinstance(result, Path):
        return str(result)
    return result


def _typed(hint: Any, value: Any) -> Any:
    """``value`` read from JSON, made to fit the field type ``hint`` (tuples and nested results)."""
    origin = typing.get_origin(hint)
    if value is None:
        return None
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_json(hint, value)
    if origin is typing.Union or origin is types.UnionType:  # X | None: the one non-None member
        (member,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _typed(member, value)
    if origin is tuple:
        (item, *_) = typing.get_args(hint)
        return tuple(_typed(item, v) for v in value)
    return value


def from_json(cls: type[R], doc: Mapping[str, Any]) -> R:
    """A ``cls`` result from its :func:`to_json` form; a missing field is an error naming it."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    missing = [f.name for f in fields if f.name not in doc]
    if missing:
        raise ValueError(f"{cls.__name__}: field(s) {missing} missing; was the file written by an older version? "
                         "Re-run the step that writes it")
    return cls(**{f.name: _typed(hints[f.name], doc[f.name]) for f in fields})


def save(path: str | os.PathLike[str], result: object) -> Path:
    """Write ``result`` as JSON, atomically; return the path."""
    atomic_write_text(path, json.dumps(to_json(result), indent=1, sort_keys=True) + "\n")
    return Path(path)


def load(path: str | os.PathLike[str], cls: type[R]) -> R:
    """Read a ``cls`` result written by :func:`save`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run the step that writes it first")
    return from_json(cls, json.loads(path.read_text()))
