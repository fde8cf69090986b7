"""A delivery of studies is one Dagster run with a step per study; a study that fails fails its own step only,
and ``run`` ingests only what is new or changed."""

from __future__ import annotations

import shutil

from dagster import AssetKey, DagsterInstance, RunsFilter


def test_one_run_per_delivery_and_a_bad_study_fails_alone(tmp_path, deid_key, new_project):
    from medcore.data.synthetic import write_synthetic_studies
    from pipelines.definitions import make_definitions
    from pipelines.delivery import delivery_run_config, failed_studies
    from pipelines.demo import ingest_delivery
    from pipelines.params import load_params
    from pipelines.resources import PipelineSettings
    from pipelines.steps.ingest import deidentifier, list_studies

    params_file = new_project(tmp_path / "project")
    write_synthetic_studies(tmp_path / "project" / "inbox", n_patients=2, seed=5, shape=(16, 16, 6))
    params = load_params(params_file)
    defs = make_definitions(PipelineSettings(params_file=str(params_file)))
    studies = list_studies(params, deidentifier(params))
    good = sorted(studies)
    with DagsterInstance.ephemeral() as instance:
        gone = "study-000000000000"  # a study moved away after it was seen
        instance.add_dynamic_partitions("study", [*good, gone])
        result = defs.resolve_job_def("ingest_delivery").execute_in_process(
            run_config=delivery_run_config([good[0], gone, *good[1:]]), instance=instance, raise_on_error=False)
        assert not result.success
        (failure,) = result.get_step_failure_events()
        assert failure.step_key == f"ingest_one_study[{gone.replace('-', '_')}]"
        assert list(failed_studies(result)) == [gone]
        assert "no matching folder in the inbox" in failed_studies(result)[gone]
        assert instance.get_materialized_partitions(AssetKey("labels")) == set(good)  # the others went on
        checks = {(e.check_name, e.partition, e.passed) for e in result.get_asset_check_evaluations()}
        assert {(name, k, True) for name in ("geometry_sanity", "phi_scan", "label_alignment") for k in good} <= checks

        assert ingest_delivery(params, instance, defs, tags={}) == {}  # everything in the inbox is ingested
        assert len(instance.get_runs(RunsFilter(job_name="ingest_delivery"))) == 1  # so nothing ran
        changed = studies[good[1]]
        extra = next(p for p in changed.rglob("*") if p.is_file())
        shutil.copyfile(extra, extra.with_name("copy-" + extra.name))  # the study grew after ingestion
        assert ingest_delivery(params, instance, defs, tags={}) == {}
        runs = instance.get_runs(RunsFilter(job_name="ingest_delivery"))
        assert len(runs) == 2 and runs[0].is_success
        assert runs[0].run_config == delivery_run_config([good[1]])  # only the changed study, again
