"""The pure decisions of the inference stage and the PACS sensor."""

from __future__ import annotations

from medcore.dicom.web import SeriesInfo
from pipelines.inference import PRESENT, REFUSED, STORED, SeriesOutcome, StudyCandidate, StudyOutcome, matches
from pipelines.pacs import sensor_step


def candidate(key: str, done: bool) -> StudyCandidate:
    series = SeriesInfo("1.2", "1.2.3", "CT", 40)
    return StudyCandidate(key, "1.2", (series,), (done,))


def test_sensor_step_runs_each_new_study_once_per_champion_version():
    studies = {"study-a": candidate("study-a", False), "study-b": candidate("study-b", True)}
    run, cursor = sensor_step({}, "3", studies)
    assert run == ["study-a"] and cursor == {"version": "3", "seen": ["study-a", "study-b"]}
    again, same = sensor_step(cursor, "3", {})  # considered studies are not queried again
    assert again == [] and same == cursor
    new_champion, _ = sensor_step(cursor, "4", studies)
    assert new_champion == ["study-a"]  # a new champion looks again; study-b already has its SEG


def test_series_match_and_study_status():
    assert matches(SeriesInfo("s", "x", "ct", 20), "CT", 8)
    assert not matches(SeriesInfo("s", "x", "MR", 20), "CT", 8)
    assert not matches(SeriesInfo("s", "x", "CT", 1), "CT", 8)  # a localizer, not a stack
    stored = StudyOutcome("study-a", "m", "2", (SeriesOutcome("series-1", STORED), SeriesOutcome("series-2", PRESENT)))
    assert stored.status == STORED and stored.line() == "study-a: stored (m v2)"
    present = StudyOutcome("study-a", "m", "2", (SeriesOutcome("series-1", PRESENT),))
    assert present.line() == "study-a: already present (m v2)"
    refused = StudyOutcome("study-b", "m", "2", (SeriesOutcome("series-3", REFUSED, "missing_slices: gap"),))
    assert refused.status == REFUSED and refused.line() == "study-b: refused (series-3: missing_slices: gap)"


def test_champion_input_is_the_modality_its_plan_was_made_for(tmp_path):
    """A version's ``modality`` tag (from its plan) decides which series the sensor segments; MSD's "MRI"
    is DICOM's "MR"; a version registered without the tag falls back to ``pacs.modality``."""
    from mlflow.tracking import MlflowClient

    from pipelines.inference import champion_input

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = {"register": {"model_name": "seg", "tracking_uri": uri}, "pacs": {"modality": "CT", "min_slices": 8},
              "root": str(tmp_path)}
    client = MlflowClient(uri, uri)
    client.create_registered_model("seg")
    for tags in ({"modality": "MRI"}, {}):
        version = client.create_model_version("seg", f"file://{tmp_path}", tags=tags)
        client.set_registered_model_alias("seg", "champion", version.version)
        ref = champion_input(params)
        assert (ref.version, ref.modality, ref.min_slices) == (str(version.version), "MR" if tags else "CT", 8)
