"""DICOM SEG placed on its image's voxel grid by world coordinates (medcore.dicom.seg_align).

Synthetic SEGs come from ``write_seg`` on the generator's series (axial with reversed instance order,
oblique, axial) and are then rewritten as other tools write them: sparse, shuffled, flipped in plane,
transposed, shifted. The real SEG is pydicom's ``liver.dcm``.
"""

from __future__ import annotations

import copy
import json
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medcore.data.synthetic import LABEL_NAMES, write_synthetic_studies
from medcore.dicom.convert import convert_tree
from medcore.dicom.deid import Deidentifier
from medcore.dicom.geometry import affine_ras
from medcore.dicom.seg import SegmentationError, read_seg, write_seg
from medcore.dicom.seg_align import SegAlignmentError, seg_on_image_grid, segment_values

PHI_LABEL = "Vorlax^Quinhen MRN55501234"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("segalign")
    m = write_synthetic_studies(root, n_patients=2, seed=3, shape=(20, 24, 6), seg=True, localizer=False,
                                overlays=False)
    doc = json.loads(m.label_manifest.read_text())
    cases = []
    for series, entry in zip([s for s in m.series if s.mask], doc["series"]):
        mask = nib.load(m.root / series.mask)
        cases.append({"series": series, "seg": m.label_manifest.parent / entry["seg"],
                      "mask": np.asarray(mask.dataobj), "affine": mask.affine})
    assert {c["series"].kind for c in cases} == {"axial", "oblique"}
    return m, cases


def _bits(ds) -> np.ndarray:
    n, rows, cols = int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns)
    return np.unpackbits(np.frombuffer(ds.PixelData, np.uint8), bitorder="little")[: n * rows * cols] \
        .reshape(n, rows, cols).astype(bool)


def _save(ds, frames: np.ndarray, groups: list, path):
    ds.PerFrameFunctionalGroupsSequence = pydicom.sequence.Sequence(groups)
    ds.NumberOfFrames = len(groups)
    ds.Rows, ds.Columns = int(frames.shape[1]), int(frames.shape[2])
    packed = np.packbits(frames.reshape(-1), bitorder="little").tobytes()
    ds.PixelData = packed + (b"\0" if len(packed) % 2 else b"")
    ds.save_as(path, enforce_file_format=True)
    return path


def _rewrite(src, dst, *, sparse_shuffle=False, flip_columns=False, transpose=False, shift_mm=None,
             spacing_scale=None, ref_uid=None, seg_label=None):
    """A copy of the SEG at ``src`` with the same world content (unless shift/spacing change it)."""
    ds = pydicom.dcmread(src)
    frames, groups = _bits(ds), list(ds.PerFrameFunctionalGroupsSequence)
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    plane = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    iop = np.array([float(v) for v in plane.ImageOrientationPatient]).reshape(2, 3)
    row_sp, col_sp = (float(v) for v in measures.PixelSpacing)
    if sparse_shuffle:
        keep = [i for i in range(len(groups)) if frames[i].any()]
        keep = list(np.random.default_rng(0).permutation(keep))
        assert len(keep) < len(groups), "the test SEG must have empty frames to drop"
        frames, groups = frames[keep], [groups[i] for i in keep]
    if flip_columns:  # columns run the other way: new first pixel is the old last column
        for g in groups:
            pos = g.PlanePositionSequence[0]
            ipp = np.array([float(v) for v in pos.ImagePositionPatient]) + (frames.shape[2] - 1) * col_sp * iop[0]
            pos.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        iop[0] = -iop[0]
        frames = frames[:, :, ::-1]
    if transpose:  # rows and columns swap roles; the first pixel stays where it was
        iop = iop[::-1]
        measures.PixelSpacing = [f"{col_sp:.6g}", f"{row_sp:.6g}"]
        frames = frames.transpose(0, 2, 1)
    if spacing_scale:
        measures.PixelSpacing = [f"{v * spacing_scale:.6g}" for v in (row_sp, col_sp)]
    if shift_mm is not None:
        for g in groups:
            pos = g.PlanePositionSequence[0]
            pos.ImagePositionPatient = [f"{float(v) + d:.6f}" for v, d in zip(pos.ImagePositionPatient, shift_mm)]
    plane.ImageOrientationPatient = [f"{v:.8f}" for v in iop.reshape(-1)]
    if ref_uid is not None:
        ds.ReferencedSeriesSequence[0].SeriesInstanceUID = ref_uid
    if seg_label is not None:
        for seg in ds.SegmentSequence:
            seg.SegmentLabel = seg_label
    return _save(ds, np.ascontiguousarray(frames), groups, dst)


def _flip_k(shape, affine):
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1, shape[2] - 1
    return affine @ flip


def test_round_trip_on_the_series_grid(synth):
    _, cases = synth
    for c in cases:
        s = c["series"]
        out = seg_on_image_grid(c["seg"], (c["mask"].shape, c["affine"]), label_names=LABEL_NAMES,
                                series_uid=s.series_instance_uid)
        assert out.labels.shape == (s.columns, s.rows, s.n_slices) and out.labels.any()
        np.testing.assert_array_equal(out.labels, c["mask"], err_msg=s.kind)
        np.testing.assert_allclose(out.affine, c["affine"])
        assert set(out.matched_by.values()) == {"name"} and out.overlap_voxels == 0


def test_reversed_slice_order_image_and_sparse_shuffled_flipped_transposed_segs(synth, tmp_path):
    _, cases = synth
    for i, c in enumerate(cases):
        shape, affine = c["mask"].shape, c["affine"]
        reversed_affine = _flip_k(shape, affine)
        out = seg_on_image_grid(c["seg"], (shape, reversed_affine), label_names=LABEL_NAMES)
        np.testing.assert_array_equal(out.labels, c["mask"][:, :, ::-1])
        for k, kwargs in enumerate([{"sparse_shuffle": True}, {"flip_columns": True}, {"transpose": True},
                                    {"sparse_shuffle": True, "flip_columns": True, "transpose": True}]):
            seg = _rewrite(c["seg"], tmp_path / f"{i}-{k}.dcm", **kwargs)
            for grid, expected in (((shape, affine), c["mask"]), ((shape, reversed_affine), c["mask"][:, :, ::-1])):
                out = seg_on_image_grid(seg, grid, label_names=LABEL_NAMES)
                np.testing.assert_array_equal(out.labels, expected, err_msg=f"{c['series'].kind} {kwargs}")


def test_medcore_image_and_converted_nifti_inputs(synth, tmp_path):
    torch = pytest.importorskip("torch")
    from medcore.io.image import Image

    m, cases = synth
    c = cases[0]
    img = Image(torch.zeros((1, *c["mask"].shape)), c["affine"])
    np.testing.assert_array_equal(seg_on_image_grid(c["seg"], img, label_names=LABEL_NAMES).labels, c["mask"])
    # a hospital drops the SEG among the images: conversion skips it as a segmentation object, not a bad file
    study = tmp_path / "study"
    shutil.copytree(m.root / c["series"].folder, study / "images")
    shutil.copyfile(c["seg"], study / "images" / "zz-seg.dcm")
    report = convert_tree(study, tmp_path / "out", deid=Deidentifier(b"s" * 32), progress=False, workers=1)
    assert report.balanced and len(report.series) == 1 and report.files_segmentation == 1
    row = report.quarantine.iloc[0]
    assert len(report.quarantine) == 1 and row["code"] == "segmentation_object" and "label" in row["message"]
    assert "segmentation objects" in report.summary() and "quarantined segmentation" not in report.summary()
    out = seg_on_image_grid(study / "images" / "zz-seg.dcm", tmp_path / "out" / report.series[0].nifti,
                            label_names=LABEL_NAMES, series_uid=report.series[0].series_uid,
                            uid_map=Deidentifier(b"s" * 32).uid)
    np.testing.assert_array_equal(out.labels, c["mask"])


def test_refusals_name_the_reason_and_never_the_segment_label(synth, tmp_path):
    _, cases = synth
    c = next(x for x in cases if x["series"].kind == "oblique")
    grid = (c["mask"].shape, c["affine"])
    ps = c["series"].pixel_spacing
    problems = {
        "off the image's voxel centres": _rewrite(c["seg"], tmp_path / "shift.dcm", shift_mm=(0.3 * ps[1], 0, 0),
                                                   seg_label=PHI_LABEL),
        "does not step one voxel": _rewrite(c["seg"], tmp_path / "spacing.dcm", spacing_scale=0.5,
                                            seg_label=PHI_LABEL),
        "references another series": _rewrite(c["seg"], tmp_path / "ref.dcm", ref_uid="1.2.3.4",
                                              seg_label=PHI_LABEL),
    }
    for reason, seg in problems.items():
        with pytest.raises(SegAlignmentError) as err:
            seg_on_image_grid(seg, grid, label_names=LABEL_NAMES, series_uid=c["series"].series_instance_uid)
        assert reason in err.value.reason and PHI_LABEL not in str(err.value)
        assert "Vorlax" not in err.value.reason
    # the same SEG with a half-voxel shift passes only with a tolerance wider than the shift
    seg_on_image_grid(problems["off the image's voxel centres"], grid, tolerance_mm=0.3 * max(ps) + 0.01)
    # the image covers less than the SEG
    small = (c["mask"].shape[0] // 2, *c["mask"].shape[1:])
    with pytest.raises(SegAlignmentError, match="outside the image"):
        seg_on_image_grid(c["seg"], (small, c["affine"]))
    with pytest.raises(SegmentationError, match="not a DICOM SEG"):
        seg_on_image_grid(next((synth[0].root / c["series"].folder).glob("*.dcm")), grid)


def test_overlap_refused_or_last_wins(synth, tmp_path):
    _, cases = synth
    c = cases[0]
    ds = pydicom.dcmread(c["seg"])
    frames, groups = _bits(ds), list(ds.PerFrameFunctionalGroupsSequence)
    liver = max((i for i, g in enumerate(groups) if g.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 1),
                key=lambda i: frames[i].sum())
    extra = copy.deepcopy(groups[liver])
    extra.SegmentIdentificationSequence[0].ReferencedSegmentNumber = 2  # spleen claims a liver frame
    seg = _save(ds, np.concatenate([frames, frames[liver:liver + 1]]), groups + [extra], tmp_path / "overlap.dcm")
    grid = (c["mask"].shape, c["affine"])
    with pytest.raises(SegAlignmentError, match="overlaps another segment"):
        seg_on_image_grid(seg, grid, label_names=LABEL_NAMES)
    out = seg_on_image_grid(seg, grid, label_names=LABEL_NAMES, overlap="last")
    n = int(frames[liver].sum())
    assert out.overlap_voxels == n > 0
    assert int((out.labels == 2).sum()) == int((c["mask"] == 2).sum()) + n


def test_segments_map_by_name_before_number(synth, tmp_path):
    m, cases = synth
    c = cases[0]
    perm = {0: 0, 1: 4, 2: 3, 3: 1, 4: 2}  # write_seg numbers segments by value: numbers now differ from names
    shuffled = np.vectorize(perm.get)(c["mask"]).astype(np.uint8)
    names = {perm[k]: v for k, v in LABEL_NAMES.items()}
    seg = write_seg(shuffled, m.root / c["series"].folder, tmp_path / "perm.dcm", names)
    by_name = seg_on_image_grid(seg, (c["mask"].shape, c["affine"]), label_names=LABEL_NAMES)
    np.testing.assert_array_equal(by_name.labels, c["mask"])
    by_number = seg_on_image_grid(seg, (c["mask"].shape, c["affine"]), label_names=None)
    np.testing.assert_array_equal(by_number.labels, shuffled)
    assert set(by_number.matched_by.values()) == {"number"}

    values, how = segment_values({1: " Kidney-Left ", 2: "background", 7: "lesion"}, LABEL_NAMES)
    assert values == {1: 3, 2: 2, 7: 7} and how == {1: "name", 2: "number", 7: "number"}
    with pytest.raises(ValueError, match="segment 1 and segment 2") as err:
        segment_values({1: "spleen", 2: PHI_LABEL}, LABEL_NAMES)
    assert PHI_LABEL not in str(err.value)


LIVER = ("dicom", "pydicom_data", "files", "liver.dcm")


def test_real_seg_liver(shared_data):
    path = shared_data.joinpath(*LIVER)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ref = read_seg(path)
    sh = ds.SharedFunctionalGroupsSequence[0]
    iop = [float(v) for v in sh.PlaneOrientationSequence[0].ImageOrientationPatient]
    spacing = [float(v) for v in sh.PixelMeasuresSequence[0].PixelSpacing]
    ipps = np.array([[float(v) for v in g.PlanePositionSequence[0].ImagePositionPatient]
                     for g in ds.PerFrameFunctionalGroupsSequence])
    bottom = ipps[np.argmin(ipps[:, 2])]
    shape = (int(ds.Columns), int(ds.Rows), 3)
    affine = affine_ras(iop, bottom, spacing, 1.0)
    ref_series = str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)

    out = seg_on_image_grid(path, (shape, affine), label_names=LABEL_NAMES, series_uid=ref_series)
    assert out.values == {1: 1} and out.matched_by == {1: "name"}  # SegmentLabel "Liver" -> liver
    assert out.labels.sum() > 1000
    np.testing.assert_array_equal(out.labels, ref.labels)
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-6)

    # a taller image, slices stored top-down: the three SEG frames land on slices 3, 2, 1
    top = bottom + np.array([0, 0, 3.0])  # slice k lies at z = top - k
    tall = affine_ras(iop, top, spacing, -1.0)
    out = seg_on_image_grid(path, ((shape[0], shape[1], 5), tall), label_names=LABEL_NAMES)
    expected = np.zeros((shape[0], shape[1], 5), np.uint8)
    for k in range(3):
        expected[:, :, 3 - k] = ref.labels[:, :, k]
    np.testing.assert_array_equal(out.labels, expected)

    shifted = affine.copy()
    shifted[0, 3] += 0.4
    with pytest.raises(SegAlignmentError, match="off the image's voxel centres"):
        seg_on_image_grid(path, (shape, shifted))
    with pytest.raises(SegAlignmentError, match="another series"):
        seg_on_image_grid(path, (shape, affine), series_uid="1.2.3")
    assert str(ds.PatientName) not in repr(out)
