"""Issue 14 acceptance: PACS studies in, the champion's DICOM SEG back, through a real Orthanc.

Two synthetic CT studies and one whose series lacks a slice go into an Orthanc started here; the
small champion of the shared pipeline run segments them through ``python -m pipelines infer`` and
through the Dagster PACS sensor. SEGs are read back with highdicom and pydicom, compared voxel for
voxel with ``medcore predict``, and checked with dicom3tools' ``dciodvfy``.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from medcore.dicom.web import Pacs, PacsSettings, PacsUnavailable

from .pacs_helpers import PROJECT, dciodvfy_errors, drop_middle_slice, start_orthanc, upload

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def orthanc():
    server = start_orthanc()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def studies(tmp_path_factory, orthanc, deid_key):
    """Three CT studies in the PACS; the third one's series misses its middle slice."""
    from medcore.data.synthetic import write_synthetic_studies

    root = tmp_path_factory.mktemp("pacs-inbox")
    manifest = write_synthetic_studies(root, n_patients=3, seed=11, shape=(32, 32, 12), studies_per_patient=(1, 1, 1),
                                       localizer=False)
    series = [s for s in manifest.series if s.kind != "localizer"]
    assert len(series) == 3
    drop_middle_slice(root / series[2].folder)
    upload(Pacs(PacsSettings(orthanc.dicomweb_url)), root / "dicom")
    return {"root": root, "manifest": manifest, "good": series[:2], "gap": series[2]}


def infer(pipeline_run, url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DAGSTER_HOME": str(pipeline_run["home"]), "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-m", "pipelines", "infer", "--pacs", url,
                           "--params", str(pipeline_run["params_file"])],
                          env=env, capture_output=True, text=True, timeout=900, cwd=pipeline_run["root"])


def seg_instances(pacs: Pacs) -> list[dict]:
    found = pacs.client.search_for_instances(search_filters={"Modality": "SEG"}, get_remaining=True)
    return [pydicom.Dataset.from_json(item) for item in found]


@pytest.fixture(scope="module")
def first_run(pipeline_run, orthanc, studies):
    return infer(pipeline_run, orthanc.dicomweb_url)


@pytest.fixture(scope="module")
def champion_dir(pipeline_run, tmp_path_factory):
    import mlflow

    from pipelines.inference import registered_model_dir

    reg = pipeline_run["result"]
    mlflow.set_tracking_uri(reg.tracking_uri)
    mlflow.set_registry_uri(reg.tracking_uri)
    version = mlflow.MlflowClient(reg.tracking_uri).get_model_version_by_alias(reg.model_name, "champion")
    local = mlflow.artifacts.download_artifacts(f"models:/{reg.model_name}/{version.version}",
                                               dst_path=str(tmp_path_factory.mktemp("champion")))
    return registered_model_dir(Path(local)), reg.model_name, str(version.version)


def test_infer_stores_one_seg_per_good_study_and_refuses_the_gap(first_run, orthanc, studies):
    assert first_run.returncode == 0, first_run.stderr[-3000:]
    lines = [line for line in first_run.stdout.splitlines() if line.startswith("study-")]
    assert len(lines) == 3, first_run.stdout
    assert sum(": stored (" in line for line in lines) == 2
    refused = [line for line in lines if ": refused (" in line]
    assert len(refused) == 1 and "missing_slices" in refused[0]
    segs = seg_instances(Pacs(PacsSettings(orthanc.dicomweb_url)))
    assert len(segs) == 2
    assert {str(s.StudyInstanceUID) for s in segs} == {s.study_instance_uid for s in studies["good"]}


def test_segs_reference_their_source_and_match_medcore_predict(first_run, orthanc, studies, champion_dir, tmp_path):
    from medcore.cli import main as medcore_main
    from medcore.dicom.seg_align import seg_on_image_grid
    from medcore.inferers.model_dir import read_spec

    model_dir, name, version = champion_dir
    spec = read_spec(model_dir)
    pacs = Pacs(PacsSettings(orthanc.dicomweb_url))
    for series in studies["good"]:
        found = pacs.client.search_for_series(series.study_instance_uid, search_filters={"Modality": "SEG"})
        assert len(found) == 1
        seg_series = pydicom.Dataset.from_json(found[0]).SeriesInstanceUID
        (ds,) = pacs.client.retrieve_series(series.study_instance_uid, seg_series)
        path = tmp_path / f"{series.series_instance_uid}.dcm"
        ds.save_as(path, enforce_file_format=True)
        source = pydicom.dcmread(next((studies["root"] / series.folder).glob("*.dcm")), stop_before_pixels=True)
        # references its series, shares its frame of reference, carries its patient and study
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_instance_uid
        assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID == series.frame_of_reference_uid
        for kw in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber"):
            assert ds[kw].value == source[kw].value, kw
        seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(path))
        labels_by_segment = {int(d.SegmentNumber): d.SegmentLabel for d in seg.SegmentSequence}
        assert set(labels_by_segment.values()) == {k for k, v in spec.labels.items() if v}
        algo = seg.get_segment_description(1).algorithm_identification
        assert algo[0].AlgorithmName == name and algo[0].AlgorithmVersion == version
        assert dciodvfy_errors(path) == []
        # voxel for voxel against `medcore predict` on the converted grid
        out = tmp_path / "predict"
        assert medcore_main(["predict", str(model_dir), str(studies["root"] / series.folder), str(out),
                             "--quiet", "--device", "cpu"]) == 0
        pred = nib.load(next(out.glob("series-*.nii.gz")))
        expected = np.asarray(pred.dataobj)
        placed = seg_on_image_grid(path, (expected.shape, pred.affine), series_uid=series.series_instance_uid,
                                   label_names={v: k for k, v in spec.labels.items()})
        np.testing.assert_array_equal(placed.labels, expected)
        # `medcore predict --format seg` writes the same SEG: same UID, same frames
        for old in out.iterdir():
            old.unlink()
        assert medcore_main(["predict", str(model_dir), str(studies["root"] / series.folder), str(out), "--quiet",
                             "--device", "cpu", "--format", "seg", "--model-name", name,
                             "--model-version", version]) == 0
        local = pydicom.dcmread(next(out.glob("series-*.dcm")))
        assert local.SOPInstanceUID == ds.SOPInstanceUID
        np.testing.assert_array_equal(local.pixel_array, pydicom.dcmread(path).pixel_array)
        assert dciodvfy_errors(next(out.glob("series-*.dcm"))) == []
        for old in out.iterdir():
            old.unlink()


def test_second_run_stores_nothing_new(first_run, pipeline_run, orthanc, studies):
    pacs = Pacs(PacsSettings(orthanc.dicomweb_url))
    before = len(pacs.client.search_for_instances(get_remaining=True))
    second = infer(pipeline_run, orthanc.dicomweb_url)
    assert second.returncode == 0, second.stderr[-3000:]
    lines = [line for line in second.stdout.splitlines() if line.startswith("study-")]
    assert sum(": already present (" in line for line in lines) == 2
    assert sum(": refused (" in line and "missing_slices" in line for line in lines) == 1
    assert len(pacs.client.search_for_instances(get_remaining=True)) == before
    assert len(seg_instances(pacs)) == 2


def test_sensor_adds_one_partition_and_one_run(pipeline_run, deid_key, tmp_path):
    from dagster import build_sensor_context

    from pipelines.definitions import make_definitions
    from pipelines.pacs import PACS_PARTITIONS, PacsResource, pacs_sensor
    from pipelines.resources import PipelineSettings

    params, instance = pipeline_run["params"], pipeline_run["instance"]
    server = start_orthanc()
    try:
        from medcore.data.synthetic import write_synthetic_studies

        pacs = Pacs(PacsSettings(server.dicomweb_url))
        fresh_study = write_synthetic_studies(tmp_path, n_patients=1, seed=23, shape=(32, 32, 12),
                                              studies_per_patient=(1,), localizer=False)
        upload(pacs, fresh_study.root / "dicom")
        resources = {"settings": PipelineSettings(params_file=params["params_file"],
                                                  output_dir=str(params["output_dir"])),
                     "pacs": PacsResource(url=server.dicomweb_url)}
        defs = make_definitions(resources["settings"], pacs=resources["pacs"])
        first = pacs_sensor(build_sensor_context(instance=instance, resources=resources))
        assert len(first.run_requests) == 1
        (request,) = first.run_requests
        (added,) = first.dynamic_partitions_requests
        assert list(added.partition_keys) == [request.partition_key]
        assert request.run_key == f"{request.partition_key}-v{pipeline_run['result'].version}"
        instance.add_dynamic_partitions(PACS_PARTITIONS, list(added.partition_keys))
        result = defs.resolve_job_def("inference").execute_in_process(partition_key=request.partition_key,
                                                                      instance=instance)
        assert result.success
        meta = result.get_asset_materialization_events()[0].materialization.metadata
        assert meta["status"].value == "stored"
        assert len(seg_instances(pacs)) == 1
        again = pacs_sensor(build_sensor_context(instance=instance, cursor=first.cursor, resources=resources))
        assert not again.run_requests and not again.dynamic_partitions_requests
        fresh = pacs_sensor(build_sensor_context(instance=instance, resources=resources))
        assert not fresh.run_requests  # even without a cursor: the champion's SEG is already there
    finally:
        server.stop()


def test_a_pacs_that_is_down_fails_with_a_clear_message(pipeline_run, capsys):
    from pipelines.infer import run_infer
    from pipelines.orthanc import free_port
    from pipelines.params import load_params

    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    params = load_params(pipeline_run["params_file"], overrides={"pacs": {"backoff_seconds": 0.01, "retries": 2}})
    assert run_infer(params, url) == 1
    err = capsys.readouterr().err
    assert f"PACS {url} unavailable" in err and "failed 3 times" in err and "nothing was stored" in err
    with pytest.raises(PacsUnavailable, match="run again once the PACS is back"):
        Pacs(PacsSettings(url, retries=1, backoff=0.01)).study_uids()


def test_no_planted_phi_left_by_inference(first_run, pipeline_run, studies):
    """After the runs: no planted PHI of the PACS studies in Dagster, MLflow, outputs or the printed logs."""
    root = Path(pipeline_run["root"])
    planted = [v for v in studies["manifest"].planted_phi if len(v) >= 4]
    assert len(planted) > 20
    targets = [p for d in ("outputs", "dagster_home", "mlartifacts") for p in (root / d).rglob("*") if p.is_file()]
    targets.append(root / "mlflow.db")
    hits = []
    for path in targets:
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            try:
                data += gzip.decompress(data)
            except OSError:
                pass
        hits += [(str(path.relative_to(root)), v[:3]) for v in planted if v.encode() in data]
    logs = first_run.stdout + first_run.stderr
    hits += [("infer output", v[:3]) for v in planted if v in logs]
    uids = [s.study_instance_uid for s in studies["manifest"].series] + \
        [s.series_instance_uid for s in studies["manifest"].series]
    hits += [("infer output", "uid") for u in uids if u in logs]
    assert not hits, hits[:10]
