"""Blocking asset checks: geometry sanity, label-to-image alignment, PHI scan, minimum Dice.

The checking itself is medcore's (:mod:`medcore.io.checks`, :mod:`medcore.dicom.phi`); these wrap it
for Dagster.
"""


from dagster import AssetCheckExecutionContext, AssetCheckResult, asset_check

from medcore.dicom.phi import find_values, source_phi_values
from medcore.io.checks import geometry_problems
from pipelines.assets import EvaluateConfig, evaluation, labels, nifti_volumes, study_partitions
from pipelines.resources import PipelineSettings
from pipelines.steps.convert import study_labels
from pipelines.steps.ingest import study_folder
from pipelines.steps.layout import Layout
from pipelines.steps.results import Evaluation, load


def geometry_result(params: dict, key: str) -> AssetCheckResult:
    """Every converted volume of study ``key`` has a finite, invertible affine that agrees with its voxel sizes."""
    problems = geometry_problems(Layout.from_params(params).converted_dir(key))
    return AssetCheckResult(passed=not problems, metadata={"problems": "\n".join(problems) or "none"})


def phi_result(params: dict, key: str, deid) -> AssetCheckResult:
    """No identifying header value of the source study ``key`` appears in any of its converted files."""
    values = source_phi_values(study_folder(params, deid, key))
    hits = find_values(Layout.from_params(params).converted_dir(key), values)
    return AssetCheckResult(passed=not hits, metadata={"values_checked": len(values), "hits": len(hits)})


def alignment_result(params: dict, key: str) -> AssetCheckResult:
    """Every matched mask of study ``key`` lies on its image's voxel grid (shape and affine)."""
    info = study_labels(params, key)
    bad = info["misaligned"]
    return AssetCheckResult(passed=not bad, metadata={
        "pairs": len(info["pairs"]), "misaligned": len(bad),
        "reasons": "\n".join(f"{b['series_id']}: {b['reason']}" for b in bad) or "none"})


@asset_check(asset=nifti_volumes, blocking=True, partitions_def=study_partitions)
def geometry_sanity(context: AssetCheckExecutionContext, settings: PipelineSettings) -> AssetCheckResult:
    """Every converted volume has a finite, invertible affine that agrees with its voxel sizes."""
    return geometry_result(settings.params(), context.partition_key)


@asset_check(asset=nifti_volumes, blocking=True, partitions_def=study_partitions)
def phi_scan(context: AssetCheckExecutionContext, settings: PipelineSettings) -> AssetCheckResult:
    """No identifying header value of the source study appears in any converted file."""
    return phi_result(settings.params(), context.partition_key, settings.deidentifier())


@asset_check(asset=labels, blocking=True, partitions_def=study_partitions)
def label_alignment(context: AssetCheckExecutionContext, settings: PipelineSettings) -> AssetCheckResult:
    """Every matched mask lies on its image's voxel grid (shape and affine)."""
    return alignment_result(settings.params(), context.partition_key)


@asset_check(asset=evaluation, blocking=True)
def minimum_dice(config: EvaluateConfig, settings: PipelineSettings) -> AssetCheckResult:
    """The mean foreground Dice must reach ``min_dice`` before the model may be registered."""
    params = settings.params()
    min_dice = float(params["evaluate"]["min_dice"] if config.min_dice is None else config.min_dice)
    summary = load(Layout.from_params(params).summary_json, Evaluation)
    return AssetCheckResult(passed=summary.mean_dice >= min_dice,
                            metadata={"mean_dice": summary.mean_dice, "min_dice": min_dice})


ALL_CHECKS = [geometry_sanity, phi_scan, label_alignment, minimum_dice]
