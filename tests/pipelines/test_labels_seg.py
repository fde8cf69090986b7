"""Issue 6 asset 4 with labels delivered only as DICOM SEG: through the label manifest, or among the
study's DICOM files as a hospital sends them. The step functions (ingest, convert, labels) run on a
tiny synthetic study set; the written label NIfTI must equal the generator's mask voxel for voxel on
the converted image grid, and nothing from the SEG header (nor a planted SegmentLabel) may be written.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

SEG_PHI = ["Quinhenvorlax SEGPHI4417", "Annotator Drabrymor SEGPHI8812", "SEG series note SEGPHI2290"]


def _run_steps(params: dict) -> dict:
    """``{study key: (ConvertedStudy, StudyLabels)}`` of every inbox study."""
    from pipelines.steps.convert import convert_study, match_labels
    from pipelines.steps.ingest import deidentifier, ingest_study, list_studies, record_raw

    deid = deidentifier(params)
    out = {}
    for key in list_studies(params, deid):
        record_raw(params, key, deid)
        ingest_study(params, key, deid)
        out[key] = (convert_study(params, key, deid), match_labels(params, key, deid))
    return out


def _plant_seg_phi(path: Path) -> None:
    """Free text a real SEG may carry: a SegmentLabel that is a name, creator and description."""
    ds = pydicom.dcmread(path)
    ds.SegmentSequence[0].SegmentLabel = SEG_PHI[0]  # segment 1 no longer matches a name: mapped by number
    ds.ContentCreatorName = SEG_PHI[1]
    ds.SeriesDescription = SEG_PHI[2]
    ds.save_as(path, enforce_file_format=True)


def _project(tmp_path, new_project, delivery: str):
    from medcore.data.synthetic import write_synthetic_studies
    from pipelines.params import load_params

    root = tmp_path / "project"
    params = load_params(new_project(root))
    m = write_synthetic_studies(root / "inbox", n_patients=2, seed=4, shape=(24, 20, 6), seg=True)
    labels = root / "inbox" / "labels"
    truth = tmp_path / "truth"  # ground-truth masks, out of the pipeline's reach
    truth.mkdir()
    doc = json.loads(m.label_manifest.read_text())
    for entry in doc["series"]:
        shutil.move(labels / entry.pop("mask"), truth / f"{entry['series_instance_uid']}.nii.gz")
    labelled = [s for s in m.series if s.mask]
    assert len(labelled) == len(doc["series"]) == 3
    _plant_seg_phi(labels / doc["series"][0]["seg"])
    if delivery == "dicom_folder":  # each SEG sits in its study folder; the manifest only names the labels
        for s, entry in zip(labelled, doc["series"]):
            study = root / "inbox" / Path(s.folder).parent
            (study / "derived").mkdir()
            shutil.move(labels / entry["seg"], study / "derived" / "0001.dcm")
        doc["series"] = []
    m.label_manifest.write_text(json.dumps(doc))
    assert not list((root / "inbox").rglob("*.nii*"))
    return root, params, m, truth


@pytest.mark.parametrize("delivery", ["manifest", "dicom_folder"])
def test_seg_only_labels_match_the_ground_truth_and_leak_nothing(tmp_path, deid_key, new_project, delivery):
    from pipelines.steps.convert import converted_series, study_labels
    from pipelines.steps.ingest import deidentifier
    from pipelines.steps.layout import Layout

    root, params, m, truth = _project(tmp_path, new_project, delivery)
    infos = _run_steps(params)
    deid = deidentifier(params)
    layout = Layout.from_params(params)
    assert len(infos) == 3
    checked = 0
    for key, (converted, _) in infos.items():
        expected_segs = 1 if delivery == "dicom_folder" else 0
        assert converted.segmentation_objects == expected_segs and "segmentation_object" not in converted.quarantine
        labels = study_labels(params, key)
        assert labels["misaligned"] == [] and labels["unmatched_seg_files"] == 0
        assert labels["label_names"] == {"0": "background", "1": "liver", "2": "spleen", "3": "kidney_left",
                                         "4": "kidney_right"}
        pairs = {p["series_id"]: p for p in labels["pairs"]}
        for row in converted_series(params, key).itertuples():
            original = next((s for s in m.series if s.mask and deid.uid(s.series_instance_uid) == row.series_uid), None)
            if original is None:  # the localizer has no labels
                assert row.series_id not in pairs
                continue
            pair = pairs[row.series_id]
            assert pair["source"] == "seg" and {s["matched_by"] for s in pair["segments"]} <= {"name", "number"}
            written = nib.load(str(layout.out / pair["label"]))
            image = nib.load(str(layout.out / pair["image"]))
            gt = nib.load(str(truth / f"{original.series_instance_uid}.nii.gz"))
            np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(gt.dataobj), err_msg=original.kind)
            assert np.asarray(gt.dataobj).any()
            np.testing.assert_allclose(written.affine, image.affine, atol=1e-6)
            np.testing.assert_allclose(written.affine, gt.affine, atol=1e-3)
            checked += 1
    assert checked == 3
    kinds = {s.kind for s in m.series if s.mask}
    assert kinds == {"axial", "oblique"}

    # PHI audit: no planted value (images' or SEG's) in any written byte or path
    planted = [v for v in m.planted_phi + SEG_PHI if len(v) >= 4]
    segs = [p for p in (root / "inbox").rglob("*") if p.is_file() and "seg" in str(pydicom.dcmread(
        p, stop_before_pixels=True, force=True).get("Modality", "")).lower()]
    assert len(segs) == 3
    seg_bytes = b"".join(p.read_bytes() for p in segs)
    assert all(v.encode() in seg_bytes for v in SEG_PHI) and sum(v.encode() in seg_bytes for v in planted) > 10
    files = [p for p in (root / "outputs").rglob("*") if p.is_file()]
    assert len(files) > 10
    hits = []
    for path in files:
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data += gzip.decompress(data)
        hits += [(path.name, v[:3]) for v in planted if v.encode() in data or v.encode("utf-16-le") in data]
        assert not any(v in path.as_posix() for v in planted if len(v) >= 6)
    assert not hits, hits[:10]


def test_misaligned_or_foreign_seg_is_listed_with_the_reason(tmp_path, deid_key, new_project):
    from pipelines.steps.convert import match_labels, study_labels
    from pipelines.steps.ingest import deidentifier
    from pipelines.steps.results import to_json

    root, params, m, _ = _project(tmp_path, new_project, "manifest")
    infos = _run_steps(params)
    doc = json.loads(m.label_manifest.read_text())
    seg = m.label_manifest.parent / doc["series"][1]["seg"]
    ds = pydicom.dcmread(seg)
    ds.ReferencedSeriesSequence[0].SeriesInstanceUID = doc["series"][2]["series_instance_uid"]
    ds.save_as(seg, enforce_file_format=True)
    seg0 = m.label_manifest.parent / doc["series"][0]["seg"]
    ds = pydicom.dcmread(seg0)
    for group in ds.PerFrameFunctionalGroupsSequence:  # a third of a pixel off along x
        pos = group.PlanePositionSequence[0]
        pos.ImagePositionPatient = [f"{float(pos.ImagePositionPatient[0]) + 0.4:.6f}", *pos.ImagePositionPatient[1:]]
    ds.save_as(seg0, enforce_file_format=True)
    deid = deidentifier(params)
    reasons = []
    for key in infos:
        labels = match_labels(params, key, deid)
        assert to_json(labels.misaligned) == study_labels(params, key)["misaligned"]
        reasons += [(x.source, x.reason) for x in labels.misaligned]
    assert sorted(r for _, r in reasons) == ["DICOM SEG: SEG frames lie up to 0.4 mm off the image's voxel centres "
                                             "(tolerance 0.01 mm)",
                                             "DICOM SEG: the SEG references another series than this image"]
    assert {s for s, _ in reasons} == {"seg"}
    assert sum(labels.labelled_series for _, labels in infos.values()) == 3


def test_nifti_mask_wins_over_seg_for_the_same_series(tmp_path, deid_key, new_project):
    """Rule: manifest NIfTI mask > manifest SEG > SEG among the study's files (the SEG is then not read)."""
    from pipelines.steps.convert import study_labels

    root, params, m, truth = _project(tmp_path, new_project, "manifest")
    doc = json.loads(m.label_manifest.read_text())
    entry = doc["series"][0]
    shutil.copyfile(truth / f"{entry['series_instance_uid']}.nii.gz", m.label_manifest.parent / "mask.nii.gz")
    entry["mask"] = "mask.nii.gz"
    (m.label_manifest.parent / entry["seg"]).write_bytes(b"not a SEG any more")
    m.label_manifest.write_text(json.dumps(doc))
    infos = _run_steps(params)
    sources = [p["source"] for key in infos for p in study_labels(params, key)["pairs"]]
    assert sorted(sources) == ["nifti", "seg", "seg"]
    assert all(study_labels(params, key)["misaligned"] == [] for key in infos)
