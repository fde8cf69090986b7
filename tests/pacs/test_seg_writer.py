"""The highdicom SEG writer: identity, references, deterministic UIDs, refusals, dciodvfy, read-back."""

from __future__ import annotations

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from medcore.data.synthetic import LABEL_NAMES, write_synthetic_studies
from medcore.dicom.convert import load_series
from medcore.dicom.seg import SegAlgorithm, SegmentationError, build_seg, read_seg, seg_uids, write_seg
from tests.pipelines.pacs_helpers import dciodvfy_errors

ALGORITHM = SegAlgorithm("medcore-segmentation", "7")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    m = write_synthetic_studies(tmp_path_factory.mktemp("seg"), n_patients=2, seed=4, shape=(20, 24, 6),
                                localizer=False)
    series = next(s for s in m.series if s.kind == "oblique")  # patient 1: an oblique stack
    folder = m.root / series.folder
    mask = np.asarray(nib.load(m.root / series.mask).dataobj)
    _, affine, _ = load_series(folder)
    return folder, series, mask, affine


def test_seg_carries_identity_references_and_algorithm(case, tmp_path):
    folder, series, mask, affine = case
    path = write_seg(mask, folder, tmp_path / "seg.dcm", LABEL_NAMES, algorithm=ALGORITHM, affine=affine)
    source = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
    ds = pydicom.dcmread(path)
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber",
               "FrameOfReferenceUID"):
        assert ds[kw].value == source[kw].value, kw
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_instance_uid
    referenced = {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in folder.glob("*.dcm")}
    seg = hd.seg.segread(path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [LABEL_NAMES[v] for v in sorted(LABEL_NAMES) if v]
    for item in seg.SegmentSequence:
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentAlgorithmName == ALGORITHM.name
        algo = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == (ALGORITHM.name, ALGORITHM.version)
    back = read_seg(path)
    np.testing.assert_array_equal(back.labels, mask)
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)
    assert dciodvfy_errors(path) == []


def test_uids_follow_series_model_and_version(case):
    folder, series, mask, affine = case
    a = build_seg(mask, folder, LABEL_NAMES, algorithm=ALGORITHM)
    b = build_seg(mask, folder, LABEL_NAMES, algorithm=ALGORITHM)
    assert a.SOPInstanceUID == b.SOPInstanceUID == seg_uids(series.series_instance_uid, ALGORITHM).instance
    assert a.SeriesInstanceUID == b.SeriesInstanceUID != a.SOPInstanceUID
    other = build_seg(mask, folder, LABEL_NAMES, algorithm=SegAlgorithm(ALGORITHM.name, "8"))
    assert other.SOPInstanceUID != a.SOPInstanceUID
    assert seg_uids("1.2.3", ALGORITHM).instance != a.SOPInstanceUID
    assert pydicom.uid.UID(a.SOPInstanceUID).is_valid and len(a.SOPInstanceUID) <= 64
    manual = build_seg(mask, folder, LABEL_NAMES)
    assert manual.SOPInstanceUID != a.SOPInstanceUID and manual.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"


def test_refusals(case):
    folder, _, mask, affine = case
    shifted = affine.copy()
    shifted[:3, 3] += 2.0
    with pytest.raises(SegmentationError, match="resampled"):
        build_seg(mask, folder, LABEL_NAMES, affine=shifted)
    with pytest.raises(SegmentationError, match="does not match"):
        build_seg(mask[:, :, 1:], folder, LABEL_NAMES)
    with pytest.raises(SegmentationError, match="no name"):
        build_seg(mask, folder, {1: "liver"})
    empty = build_seg(np.zeros_like(mask), folder, LABEL_NAMES, algorithm=ALGORITHM)
    assert int(empty.NumberOfFrames) == 4 * mask.shape[2]  # every segment stays, with empty frames


def test_manual_segs_of_the_synthetic_studies_pass_dciodvfy(tmp_path):
    """The SEGs the test data generator writes (axial, oblique, non-square pixels) are valid too."""
    m = write_synthetic_studies(tmp_path, n_patients=3, seed=2, shape=(20, 24, 5), seg=True)
    segs = sorted((m.root / "labels").glob("seg-*.dcm"))
    assert len(segs) >= 3
    for path in segs:
        assert dciodvfy_errors(path) == [], path.name
