"""Step results: frozen dataclasses that round-trip through their one JSON form."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pipelines.steps.results import (
    Bootstrap,
    ConvertedStudy,
    DatasetVersion,
    Registration,
    SeriesWritten,
    from_json,
    load,
    save,
    to_json,
)


def test_results_round_trip_through_json(tmp_path):
    converted = ConvertedStudy("study-1", 1, 0, 3, 2, 1, {"non_image": 1}, 0,
                               (SeriesWritten("ser-1", "ser-1.nii.gz", (4, 5, 6), (1.0, 1.0, 2.5)),))
    assert from_json(ConvertedStudy, json.loads(json.dumps(to_json(converted)))) == converted
    for stat in (None, Bootstrap(12, 0.05, 0.01, 0.09, 2000, True)):
        reg = Registration("m", "3", "champion", "why", "models:/m@champion", "sqlite:///x", "run", "src", "art",
                           {"training_key": "k"}, stat)
        assert load(save(tmp_path / "reg.json", reg), Registration) == reg
    with pytest.raises(dataclasses.FrozenInstanceError):
        converted.study = "other"  # type: ignore[misc]


def test_a_stale_result_file_names_what_is_missing(tmp_path):
    (tmp_path / "v.json").write_text(json.dumps({"dataset_hash": "h", "cases": 1}))
    with pytest.raises(ValueError, match=r"DatasetVersion: field\(s\) \['studies'.*Re-run the step"):
        load(tmp_path / "v.json", DatasetVersion)
    with pytest.raises(FileNotFoundError, match="run the step that writes it"):
        load(tmp_path / "missing.json", DatasetVersion)
