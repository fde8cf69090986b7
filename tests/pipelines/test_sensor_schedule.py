"""Acceptance 2: the inbox sensor adds one partition per settled study, nothing mid-copy, and one run for
all the studies that settled together."""

from __future__ import annotations

import shutil

from dagster import DagsterInstance, build_sensor_context

from pipelines.sensors import inbox_sensor, stable_studies


def test_stable_studies_needs_two_equal_observations():
    sig = {"files": 3, "bytes": 10, "mtime_ns": 1}
    ready, state = stable_studies({"a": 1}, {"a": sig}, {}, now=100.0, settle=0)
    assert ready == []
    ready, state = stable_studies({"a": 1}, {"a": sig}, state, now=101.0, settle=5)
    assert ready == []  # unchanged but not yet settled for 5 s
    ready, _ = stable_studies({"a": 1}, {"a": sig}, state, now=106.0, settle=5)
    assert ready == ["a"]
    changed = {**sig, "files": 4}
    ready, _ = stable_studies({"a": 1}, {"a": changed}, state, now=200.0, settle=0)
    assert ready == []


def _tick(instance, settings, cursor):
    ctx = build_sensor_context(instance=instance, cursor=cursor, resources={"settings": settings})
    result = inbox_sensor(ctx)
    return result


def test_sensor_adds_partition_once_copy_finished(tmp_path, deid_key, new_project):
    from medcore.data.synthetic import write_synthetic_studies
    from pipelines.resources import PipelineSettings

    source = write_synthetic_studies(tmp_path / "source", n_patients=1, seed=3, shape=(16, 16, 6))
    params_file = new_project(tmp_path / "project")
    settings = PipelineSettings(params_file=str(params_file))
    inbox = tmp_path / "project" / "inbox" / "dicom"
    study = sorted((source.root / "dicom").iterdir())[0]
    files = sorted(p for p in study.rglob("*") if p.is_file())
    half = len(files) // 2
    with DagsterInstance.ephemeral() as instance:
        for f in files[:half]:  # the copy is in progress
            (inbox / study.name / f.relative_to(study)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, inbox / study.name / f.relative_to(study))
        r1 = _tick(instance, settings, None)
        assert not r1.run_requests and not r1.dynamic_partitions_requests
        for f in files[half:]:
            shutil.copyfile(f, inbox / study.name / f.relative_to(study))
        r2 = _tick(instance, settings, r1.cursor)  # changed since the last tick: still copying
        assert not r2.run_requests and not r2.dynamic_partitions_requests
        r3 = _tick(instance, settings, r2.cursor)  # unchanged: settled
        assert len(r3.run_requests) == 1 and len(r3.dynamic_partitions_requests) == 1
        (key,) = r3.run_requests[0].run_config["ops"]["delivery_studies"]["config"]["studies"]
        assert list(r3.dynamic_partitions_requests[0].partition_keys) == [key]
        assert key.startswith("study-") and study.name not in key
        instance.add_dynamic_partitions("study", [key])
        r4 = _tick(instance, settings, r3.cursor)  # already a partition: nothing more
        assert not r4.run_requests


def test_schedule_targets_retraining_job():
    from pipelines.definitions import make_definitions
    from pipelines.schedules import weekly_retraining

    assert weekly_retraining.job_name == "retrain"
    job = make_definitions().resolve_job_def("retrain")
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {
        "training_dataset", "preprocessed_cache", "trained_model", "evaluation", "registered_model"}


def test_a_finished_delivery_requests_retraining(pipeline_run):
    """The sensors chain ingestion and training: each finished delivery run (successful, or with a failed
    study) requests one ``retrain`` run, whose trained_model step decides whether anything changed."""
    from dagster import DagsterEventType, RunsFilter, build_run_status_sensor_context

    from pipelines.sensors import retrain_after_delivery, retrain_after_partial_delivery

    instance = pipeline_run["instance"]
    (run,) = instance.get_runs(RunsFilter(job_name="ingest_delivery"))
    (record,) = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.RUN_SUCCESS).records
    context = build_run_status_sensor_context(sensor_name="retrain_after_delivery", dagster_instance=instance,
                                              dagster_event=record.event_log_entry.dagster_event, dagster_run=run)
    request = retrain_after_delivery(context)
    assert request.run_key == f"retrain-after-{run.run_id}"
    for s in (retrain_after_delivery, retrain_after_partial_delivery):
        assert s.job_name == "retrain"
