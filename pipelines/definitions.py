"""The one Dagster code location of the project (``dagster dev -m pipelines.definitions``).

``defs`` is a ``@dg.definitions`` function: Dagster builds the ``Definitions`` when it loads the code
location, not when this module is imported, and nothing reads a file until a step runs.

The executor is configuration: ``$MEDCORE_DAGSTER_EXECUTOR`` = ``in_process`` (default, SQLite-safe),
``multiprocess``, ``celery`` (package ``dagster-celery``, broker ``$MEDCORE_CELERY_BROKER``) or ``k8s``
(package ``dagster-k8s``), see pipelines/executors.py. Every choice but ``in_process`` needs a shared,
non-SQLite instance storage (``storage: postgres:`` in dagster.yaml, docs/pipelines.md "Scaling out").
"""

from __future__ import annotations

import dagster as dg

from pipelines.assets import STUDY_ASSETS, TRAINING_ASSETS
from pipelines.checks import ALL_CHECKS
from pipelines.delivery import delivery_job
from pipelines.executors import select_executor
from pipelines.federated.assets import federate_job, federated_model
from pipelines.jobs import retrain_job, study_job
from pipelines.pacs import PacsResource, inference_job, make_pacs_sensor, pacs_segmentation
from pipelines.resources import PipelineSettings
from pipelines.schedules import weekly_retraining
from pipelines.sensors import inbox_sensor, retrain_after_delivery, retrain_after_partial_delivery


def make_definitions(settings: PipelineSettings | None = None, executor: str | None = None,
                     pacs: PacsResource | None = None) -> dg.Definitions:
    """All assets, checks, jobs, schedule and sensors; ``executor`` overrides ``$MEDCORE_DAGSTER_EXECUTOR``.
    Reads the params file (the PACS sensor's polling interval): call it when Dagster loads, not at import."""
    settings = settings or PipelineSettings()
    pacs_sensor = make_pacs_sensor(settings.params()["pacs"]["poll_seconds"])
    return dg.Definitions(
        assets=[*STUDY_ASSETS, *TRAINING_ASSETS, pacs_segmentation, federated_model], asset_checks=ALL_CHECKS,
        jobs=[delivery_job, study_job, retrain_job, inference_job, federate_job], schedules=[weekly_retraining],
        sensors=[inbox_sensor, retrain_after_delivery, retrain_after_partial_delivery, pacs_sensor],
        resources={"settings": settings, "pipes_subprocess_client": dg.PipesSubprocessClient(),
                   "pacs": pacs or PacsResource()},
        # default in-process: SQLite locks under concurrent writers (ARCHITECTURE, Known traps)
        executor=select_executor(executor),
    )


@dg.definitions
def defs() -> dg.Definitions:
    """What ``dagster dev -m pipelines.definitions`` loads: the definitions with default settings."""
    return make_definitions()
