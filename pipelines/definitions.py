"""The one Dagster ``Definitions`` of the project (``dagster dev -m pipelines.definitions``).

The executor is configuration: ``$MEDCORE_DAGSTER_EXECUTOR`` = ``in_process`` (default, SQLite-safe),
``multiprocess``, ``celery`` (package ``dagster-celery``) or ``k8s`` (package ``dagster-k8s``). Every
choice but ``in_process`` needs a shared, non-SQLite instance storage (``storage: postgres:`` in
dagster.yaml, see docs/pipelines.md "Scaling out").
"""

from __future__ import annotations

import importlib
import os

from dagster import Definitions, ExecutorDefinition, PipesSubprocessClient, in_process_executor, multiprocess_executor

from pipelines.assets import STUDY_ASSETS, TRAINING_ASSETS
from pipelines.checks import ALL_CHECKS
from pipelines.jobs import retrain_job, study_job
from pipelines.resources import PipelineSettings
from pipelines.schedules import weekly_retraining
from pipelines.sensors import inbox_sensor

EXECUTOR_ENV = "MEDCORE_DAGSTER_EXECUTOR"
# name -> (module, attribute, pip package); None: built into dagster
EXECUTORS: dict[str, tuple[str, str, str] | None] = {
    "in_process": None, "multiprocess": None,
    "celery": ("dagster_celery", "celery_executor", "dagster-celery"),
    "k8s": ("dagster_k8s", "k8s_job_executor", "dagster-k8s"),
}


def select_executor(name: str | None = None) -> ExecutorDefinition:
    """The executor called ``name`` (default ``$MEDCORE_DAGSTER_EXECUTOR``, else ``in_process``)."""
    name = (name if name is not None else os.environ.get(EXECUTOR_ENV, "")).strip() or "in_process"
    if name not in EXECUTORS:
        raise ValueError(f"{EXECUTOR_ENV}={name!r}: unknown Dagster executor; choose one of {sorted(EXECUTORS)}")
    if name == "in_process":
        return in_process_executor
    if name == "multiprocess":
        return multiprocess_executor
    module, attribute, package = EXECUTORS[name]
    try:
        return getattr(importlib.import_module(module), attribute)
    except ImportError as exc:
        raise ImportError(f"{EXECUTOR_ENV}={name!r} needs the package {package!r}, which is not installed "
                          f"({exc}); run `pip install {package}` (same release line as dagster) or pick "
                          f"in_process/multiprocess") from exc


def make_definitions(settings: PipelineSettings | None = None, executor: str | None = None) -> Definitions:
    return Definitions(
        assets=[*STUDY_ASSETS, *TRAINING_ASSETS], asset_checks=ALL_CHECKS, jobs=[study_job, retrain_job],
        schedules=[weekly_retraining], sensors=[inbox_sensor],
        resources={"settings": settings or PipelineSettings(), "pipes_subprocess_client": PipesSubprocessClient()},
        # default in-process: SQLite locks under concurrent writers (ARCHITECTURE, Known traps)
        executor=select_executor(executor),
    )


defs = make_definitions()
