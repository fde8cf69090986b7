"""Dagster resources: the pipeline settings (defaults from the params file, read when a step runs),
editable in the Launchpad.

Scaling out is configuration, not code: point ``tracking_uri`` at a Postgres-backed MLflow, switch
``dagster_home/dagster.yaml`` storage to ``postgres:`` and pick the executor with
``$MEDCORE_DAGSTER_EXECUTOR`` (``pipelines/definitions.py``; see docs/pipelines.md).
"""

from __future__ import annotations

from dagster import ConfigurableResource

from pipelines.params import load_params
from pipelines.steps.ingest import deidentifier


class PipelineSettings(ConfigurableResource):
    """Where data comes from and goes; empty strings mean the params file's value."""

    params_file: str = ""
    output_dir: str = ""
    dicom_dir: str = ""
    label_manifest: str = ""
    tracking_uri: str = ""
    artifact_root: str = ""
    dvc_remote: str = ""

    def params(self, **overrides: dict) -> dict:
        """The params file (``params_file``, else ``$MEDCORE_PARAMS``, else the project's) with these
        settings and ``overrides`` (``{section: {key: value}}``) applied."""
        o: dict = {}
        if self.output_dir:
            o["output_dir"] = self.output_dir
        if self.dicom_dir or self.label_manifest:
            o["source"] = {
                k: v for k, v in (("dicom_dir", self.dicom_dir), ("label_manifest", self.label_manifest)) if v
            }
        if self.tracking_uri or self.artifact_root:
            o["register"] = {k: v for k, v in (("tracking_uri", self.tracking_uri),
                                               ("artifact_root", self.artifact_root)) if v}
        if self.dvc_remote:
            o["dvc"] = {"remote": self.dvc_remote}
        for section, values in overrides.items():
            o.setdefault(section, {}).update(values)
        return load_params(self.params_file or None, overrides=o)

    def deidentifier(self):
        """The keyed de-identifier of these params (its key never leaves the process)."""
        return deidentifier(self.params())
