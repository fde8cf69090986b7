"""Grouping frames into stacks: splits a careful reader would make, and 4D detection."""

from __future__ import annotations

import pandas as pd

from medcore.dicom.group import group_frames, image_component, temporal_key

AX = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAG = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def _row(z, **kw):
    row = dict(series_uid="1.2.3", sop_class_uid="1.2.840.10008.5.1.4.1.1.4", series_number=1, iop=AX,
               rows=8, cols=8, pixel_spacing=(1.0, 1.0), samples_per_pixel=1,
               echo_number=None, echo_time=None, image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
               is_localizer=False, ipp=(0.0, 0.0, float(z)), temporal_position=None, acquisition_number=None,
               trigger_time=None, acquisition_time=None, instance_number=1, frame_index=0)
    row.update(kw)
    return row


def _groups(rows):
    return group_frames(pd.DataFrame(rows))


def test_one_plain_series_is_one_group():
    (g,) = _groups([_row(z) for z in range(4)])
    assert g.rows == (0, 1, 2, 3) and g.split == ()


def test_split_on_orientation_size_echo_and_localizer():
    rows = [_row(z) for z in range(3)]
    rows += [_row(0, iop=SAG)]
    rows += [_row(z, rows=16) for z in range(2)]
    groups = _groups(rows)
    assert sorted(len(g.rows) for g in groups) == [1, 2, 3]
    echoes = _groups([_row(z, echo_number=e, echo_time=10.0 * e) for e in (1, 2) for z in range(3)])
    assert len(echoes) == 2 and all(dict(g.split)["echo"][0] in (1, 2) for g in echoes)
    loc = _groups([_row(z) for z in range(3)] + [_row(0, is_localizer=True)])
    assert sorted(g.localizer for g in loc) == [False, True]


def test_separate_series_uids_never_merge():
    rows = [_row(z) for z in range(3)] + [_row(z, series_uid="1.2.4") for z in range(3)]
    assert len(_groups(rows)) == 2


def test_4d_kept_together_when_every_time_point_covers_the_same_positions():
    rows = [_row(z, temporal_position=t, acquisition_number=t) for t in (1, 2, 3) for z in range(4)]
    (g,) = _groups(rows)
    assert len(g.rows) == 12


def test_acquisitions_at_different_positions_are_split():
    rows = [_row(z, acquisition_number=1) for z in (0, 2, 4)] + [_row(z, acquisition_number=2) for z in (4, 6, 8)]
    groups = _groups(rows)
    assert len(groups) == 2 and all(dict(g.split)["acquisition"][1] in (1, 2) for g in groups)


def test_per_slice_acquisition_numbers_without_repeats_stay_one_stack():
    rows = [_row(z, acquisition_number=z + 1) for z in range(5)]
    assert len(_groups(rows)) == 1


def test_image_component_and_temporal_order():
    assert image_component(("ORIGINAL", "PRIMARY", "P", "ND")) == "phase"
    assert image_component(("ORIGINAL", "PRIMARY", "M", "ND")) == "magnitude"
    a = temporal_key(_row(0, temporal_position=2))
    b = temporal_key(_row(0, temporal_position=10))
    assert a < b


def test_orientation_jitter_across_a_rounding_boundary_stays_one_stack():
    a = (1.0, 0.0, 0.0, 0.0, 0.99950, 0.0316)
    b = (1.0, 0.0, 0.0, 0.0, 0.99949, 0.0316)  # rounds differently at 3 decimals, same plane
    (g,) = _groups([_row(0, iop=a), _row(1, iop=b), _row(2, iop=a)])
    assert len(g.rows) == 3


def test_sop_class_families_never_merge():
    """Classic, enhanced and legacy converted copies of one acquisition are separate stacks."""
    families = {"1.2.840.10008.5.1.4.1.1.4": "classic", "1.2.840.10008.5.1.4.1.1.4.1": "enhanced",
                "1.2.840.10008.5.1.4.1.1.4.4": "legacy_enhanced"}
    groups = _groups([_row(z, sop_class_uid=sop) for sop in families for z in range(3)])
    assert sorted(dict(g.split)["sop_family"] for g in groups) == sorted(families.values())
    assert all(len(g.rows) == 3 for g in groups)
