"""Dagster assets: each calls one step function and reports its typed result as metadata. No values go
through an IO manager (nothing is pickled); assets hand over files in the output tree and declare ``deps``."""

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dagster import (
    AssetExecutionContext,
    Config,
    DataVersion,
    DynamicPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    PipesSubprocessClient,
    asset,
)
from pydantic import Field

from pipelines.resources import PipelineSettings
from pipelines.steps.layout import Layout

STUDY_PARTITIONS = "study"
study_partitions = DynamicPartitionsDefinition(name=STUDY_PARTITIONS)


class TrainConfig(Config):
    """Training knobs for the Launchpad. Left empty, each takes its value from the params file of the
    ``settings`` resource (``params.yaml`` by default), so Dagster and ``dvc repro`` agree."""

    nproc: int | None = Field(None, description="torchrun processes (empty: train.nproc of the params file; "
                                                "0 = one per GPU)")
    time_budget_minutes: float | None = Field(
        None, description="training time budget in minutes (empty: train.time_budget_minutes of the params file)")
    max_epochs: int | None = Field(None, description="epochs (empty: train.max_epochs of the params file, "
                                                     "or from the time budget)")
    samples_per_epoch: int | None = Field(
        None, description="patches per epoch (empty: train.samples_per_epoch of the params file)"
    )
    plan: str = Field("", description='JSON object overriding planned fields, e.g. {"patch_size": [32, 32, 16], '
                                      '"base_filters": 8} (empty: the params file\'s plan section; the rest is '
                                      "planned from the data)")
    force: bool = Field(False, description="train even when nothing changed since the last registered version")

    def overrides(self) -> dict:
        """The Launchpad values that were set, as params overrides; the params file supplies the rest."""
        chosen = {"nproc": self.nproc, "time_budget_minutes": self.time_budget_minutes,
                  "max_epochs": self.max_epochs, "samples_per_epoch": self.samples_per_epoch}
        out: dict = {"train": {k: v for k, v in chosen.items() if v is not None}}
        if self.plan.strip():
            plan = json.loads(self.plan)
            if not isinstance(plan, dict):
                raise ValueError(f"Launchpad plan must be a JSON object, got {self.plan!r}")
            out["plan"] = plan
        return out


class EvaluateConfig(Config):
    """The registration gate."""

    min_dice: float | None = Field(
        None, description="minimum mean foreground Dice (empty: evaluate.min_dice of the params file)"
    )


def raw_dicom_result(params: dict, key: str, deid) -> MaterializeResult:
    """Count and hash one inbox study (what ``raw_dicom`` reports)."""
    from pipelines.steps.ingest import record_raw

    info = record_raw(params, key, deid)
    return MaterializeResult(metadata={"files": info.files, "bytes": info.bytes},
                             data_version=DataVersion(info.content_hash))


def series_index_result(params: dict, key: str, deid) -> MaterializeResult:
    """Index one study's headers, de-identified (what ``series_index`` reports)."""
    from pipelines.steps.ingest import ingest_study

    info = ingest_study(params, key, deid)
    return MaterializeResult(metadata={"files": info.files, "frames": info.frames, "series": info.series,
                                       "skipped_files": info.skipped_files})


def nifti_volumes_result(params: dict, key: str, deid, log) -> MaterializeResult:
    """Convert one study (what ``nifti_volumes`` reports); ``log`` gets a one-line summary."""
    from pipelines.steps.convert import convert_study

    info = convert_study(params, key, deid)
    log.info(f"study {info.study}: {info.series_written} series written, {info.files_quarantined} files "
             f"quarantined, {info.segmentation_objects} DICOM SEG kept for labels")
    return MaterializeResult(metadata={
        "series_written": info.series_written, "stacks_refused": info.stacks_refused, "files_in": info.files_in,
        "files_quarantined": info.files_quarantined, "segmentation_objects": info.segmentation_objects,
        "quarantine": MetadataValue.json(info.quarantine)})


def labels_result(params: dict, key: str, deid) -> MaterializeResult:
    """Match one study's labels (what ``labels`` reports)."""
    from pipelines.steps.convert import match_labels

    info = match_labels(params, key, deid)
    return MaterializeResult(metadata={"labelled_series": info.labelled_series, "misaligned": len(info.misaligned),
                                       "label_names": MetadataValue.json(info.label_names)})


@asset(partitions_def=study_partitions, group_name="ingestion")
def raw_dicom(context: AssetExecutionContext, settings: PipelineSettings) -> MaterializeResult:
    """The incoming DICOM of one study (observed, never copied): file count, bytes and content hash."""
    return raw_dicom_result(settings.params(), context.partition_key, settings.deidentifier())


@asset(partitions_def=study_partitions, deps=[raw_dicom], group_name="ingestion")
def series_index(context: AssetExecutionContext, settings: PipelineSettings) -> MaterializeResult:
    """De-identified header index of the study (parquet)."""
    return series_index_result(settings.params(), context.partition_key, settings.deidentifier())


@asset(partitions_def=study_partitions, deps=[series_index], group_name="ingestion")
def nifti_volumes(context: AssetExecutionContext, settings: PipelineSettings) -> MaterializeResult:
    """Converted NIfTI volumes, JSON sidecars and the quarantine table of the study."""
    return nifti_volumes_result(settings.params(), context.partition_key, settings.deidentifier(), context.log)


@asset(partitions_def=study_partitions, deps=[nifti_volumes], group_name="ingestion")
def labels(context: AssetExecutionContext, settings: PipelineSettings) -> MaterializeResult:
    """Label maps matched to converted series: from the label manifest or the study's own DICOM SEG."""
    return labels_result(settings.params(), context.partition_key, settings.deidentifier())


@asset(deps=[nifti_volumes, labels], group_name="training")
def training_dataset(context: AssetExecutionContext, settings: PipelineSettings) -> MaterializeResult:
    """Fan-in of every converted, labelled study; a DVC-tracked version pushed to the local remote."""
    from pipelines.steps.dataset import assemble_dataset, available_studies, track_dataset

    params = settings.params()
    known = set(context.instance.get_dynamic_partitions(STUDY_PARTITIONS))
    studies = [s for s in available_studies(params) if s in known]
    info = assemble_dataset(params, studies)
    dvc = track_dataset(params)
    return MaterializeResult(metadata={"cases": info.cases, "studies": len(info.studies),
                                       "dataset_hash": info.dataset_hash, "dvc_md5": dvc.dvc_md5,
                                       "dvc_file": dvc.dvc_file, "modality": info.modality,
                                       "label_names": MetadataValue.json(info.label_names),
                                       "train_patients": info.train_patients, "test_patients": info.test_patients,
                                       "test_cases": info.test_cases},
                             data_version=DataVersion(info.dataset_hash))


@asset(deps=[training_dataset], group_name="training")
def preprocessed_cache(settings: PipelineSettings) -> MaterializeResult:
    """medcore's preprocessing cache for this dataset version (content-addressed safetensors)."""
    from pipelines.steps.cache import build_preprocessed_cache

    info = build_preprocessed_cache(settings.params())
    return MaterializeResult(metadata={"cache_key": info.cache_key, "bytes": info.bytes,
                                       "train_cases": info.train_cases, "val_cases": info.val_cases},
                             data_version=DataVersion(info.cache_key))


@asset(deps=[preprocessed_cache], group_name="training", output_required=False)
def trained_model(context: AssetExecutionContext, config: TrainConfig, settings: PipelineSettings,
                  pipes_subprocess_client: PipesSubprocessClient) -> Iterator[MaterializeResult]:
    """``torchrun --nproc_per_node N`` via Dagster Pipes; rank 0 streams epochs into the Dagster log. When
    nothing changed since the last training (and ``force`` is off), nothing runs: evaluation and
    registration are skipped too, and the log says why."""
    from pipelines.steps.train import finish_training, prepare_training, training_decision

    params = settings.params(**config.overrides())
    decision = training_decision(params, config.force)
    context.log.info(decision.reason if decision.action == "skip" else f"{decision.action}: {decision.reason}")
    if decision.action == "skip":
        return
    job = prepare_training(params, config.force)
    metadata: dict[str, Any] = {}
    if decision.action == "train":
        context.log.info(f"launching {job.nproc} training process(es): {' '.join(job.command[2:])}")
        result = pipes_subprocess_client.run(context=context, command=list(job.command), env=job.env,
                                             cwd=str(params["root"])).get_materialize_result()
        metadata = dict(result.metadata or {})
    latest = finish_training(params, job.run_dir)
    plan_file = Layout.from_params(params).out / latest.run_dir / "plan.json"
    plan = json.loads(plan_file.read_text()) if plan_file.is_file() else {}
    yield MaterializeResult(metadata={**metadata, "run_dir": latest.run_dir,
                                      "model_dir": latest.model_dir, "nproc": job.nproc, **plan_metadata(plan)},
                            data_version=DataVersion(latest.run_key))


def plan_metadata(plan: dict) -> dict[str, Any]:
    """The plan medcore chose, as Dagster metadata: the headline fields and every reason."""
    if not plan:
        return {}
    shown = {k: plan[k] for k in ("modality", "labels", "target_spacing", "patch_size", "normalization",
                                  "batch_size") if k in plan}
    return {"plan": MetadataValue.json(shown), "plan_reasons": MetadataValue.md(
        "\n".join(f"- {r}" for r in plan.get("reasons", [])))}


def _img(path: Path) -> str:
    return f"![{path.stem}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"


@asset(deps=[trained_model], group_name="training")
def evaluation(context: AssetExecutionContext, config: TrainConfig, settings: PipelineSettings) -> MaterializeResult:
    """Per-case metrics, summary and plots of the trained model on the held-out cases."""
    import pandas as pd

    from pipelines.steps.evaluate import evaluate

    params = settings.params(**config.overrides())
    summary = evaluate(params)
    out = Layout.from_params(params).evaluation_dir
    table = pd.read_csv(out / "per_case.csv")[["case", "class", "dice", "hausdorff_percentile"]]
    meta: dict[str, Any] = {
        "mean_dice": summary.mean_dice, "cases": summary.cases, "evaluation_set": summary.evaluation_set,
        "per_case": MetadataValue.md(table.to_markdown(index=False, floatfmt=".3f")),
        **{f"dice_{k}": v for k, v in summary.class_dice.items()}}
    for name, file in summary.plots.items():
        meta[f"plot_{name}"] = MetadataValue.md(_img(out / file))
    return MaterializeResult(metadata=meta)


@asset(deps=[evaluation], group_name="training")
def registered_model(
    context: AssetExecutionContext, config: TrainConfig, settings: PipelineSettings
) -> MaterializeResult:
    """An MLflow model version with lineage; ``champion`` moves only if it beats the champion."""
    from pipelines.steps.register import register

    params = settings.params(**config.overrides())
    result = register(params, run_tags={"dagster_run_id": context.run.run_id, "runner": "dagster"})
    context.log.info(f"registered {result.model_name} v{result.version} as {result.alias}: {result.reason}")
    return MaterializeResult(metadata={
        "model_name": result.model_name, "version": result.version, "alias": result.alias, "reason": result.reason,
        "model_uri": result.model_uri, "tracking_uri": result.tracking_uri,
        "dataset_hash": result.lineage["dataset_hash"], "code_commit": result.lineage["code_commit"]})


STUDY_ASSETS = [raw_dicom, series_index, nifti_volumes, labels]
TRAINING_ASSETS = [training_dataset, preprocessed_cache, trained_model, evaluation, registered_model]
