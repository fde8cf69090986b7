"""Geometry, stack planning and resampling on synthetic IOP/IPP arrays (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from medcore.dicom import geometry, resample, validate
from medcore.dicom.validate import GeometryError, plan_stack

AXIAL = np.array([1.0, 0, 0, 0, 1, 0])


def _stack(n, step=2.0, iop=AXIAL, origin=(0.0, 0.0, 0.0), drift=(0.0, 0.0, 0.0)):
    normal = geometry.slice_normal(iop)
    ipps = np.array([np.asarray(origin) + normal * step * k + np.asarray(drift) * k for k in range(n)])
    return np.tile(iop, (n, 1)), ipps, np.tile([0.5, 0.25], (n, 1))


def _plan(iops, ipps, spacing, ids=None, temporal=None, **kw):
    n = len(ipps)
    ids = ids if ids is not None else [(str(i), 0) for i in range(n)]
    temporal = temporal if temporal is not None else [(0,)] * n
    return plan_stack(iops, ipps, spacing, ids, temporal, **kw)


def test_axial_affine_is_lps_flipped_to_ras():
    a = geometry.affine_ras(AXIAL, (10.0, 20.0, 30.0), (0.5, 0.25), 2.0)
    expected = np.array([[-0.25, 0, 0, -10.0], [0, -0.5, 0, -20.0], [0, 0, 2.0, 30.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(a, expected)


def test_sagittal_normal_and_affine_columns():
    iop = [0, 1, 0, 0, 0, -1]  # rows run anterior->posterior, columns head->foot
    n = geometry.slice_normal(iop)
    np.testing.assert_allclose(n, [-1, 0, 0])
    a = geometry.affine_lps(iop, (0, 0, 0), (1.0, 1.0), 3.0)
    np.testing.assert_allclose(a[:3, 2], [-3, 0, 0])
    assert np.linalg.det(a[:3, :3]) > 0


def test_sort_ignores_input_order():
    iops, ipps, sp = _stack(6)
    perm = np.array([3, 0, 5, 1, 4, 2])
    order = geometry.sort_order(ipps[perm], AXIAL)
    np.testing.assert_array_equal(perm[order], np.arange(6))


def test_regular_stack_plan():
    iops, ipps, sp = _stack(5, step=2.5)
    perm = [4, 2, 0, 3, 1]
    plan = _plan(iops[perm], ipps[perm], sp)
    assert plan.n_volumes == 1 and plan.n_slices == 5
    np.testing.assert_array_equal(np.asarray(perm)[plan.order[0]], np.arange(5))
    assert plan.step == pytest.approx(2.5) and not plan.resample and plan.issues == ()


def test_descending_positions_sorted_ascending_along_normal():
    iops, ipps, sp = _stack(4, step=-3.0)
    plan = _plan(iops, ipps, sp)
    np.testing.assert_array_equal(plan.order[0], [3, 2, 1, 0])
    assert plan.step == pytest.approx(3.0)


def test_exact_duplicates_dropped():
    iops, ipps, sp = _stack(4)
    iops, ipps, sp = np.vstack([iops, iops[1]]), np.vstack([ipps, ipps[1]]), np.vstack([sp, sp[1]])
    ids = [("a", 0), ("b", 0), ("c", 0), ("d", 0), ("b", 0)]
    plan = _plan(iops, ipps, sp, ids=ids)
    assert plan.dropped == (4,) and plan.n_slices == 4 and "duplicate_frames" in plan.issues


def test_repeated_positions_make_4d_ordered_by_time():
    iops, ipps, sp = _stack(3)
    iops, ipps, sp = np.vstack([iops, iops]), np.vstack([ipps, ipps]), np.vstack([sp, sp])
    temporal = [(2,)] * 3 + [(1,)] * 3
    plan = _plan(iops, ipps, sp, temporal=temporal)
    assert plan.n_volumes == 2
    np.testing.assert_array_equal(plan.order, [[3, 4, 5], [0, 1, 2]])


def test_uneven_repeats_refused():
    iops, ipps, sp = _stack(3)
    iops, ipps, sp = np.vstack([iops, iops[:1]]), np.vstack([ipps, ipps[:1]]), np.vstack([sp, sp[:1]])
    with pytest.raises(GeometryError) as err:
        _plan(iops, ipps, sp, temporal=[(1,), (1,), (1,), (2,)])  # a second acquisition of one slice
    assert err.value.code == "inconsistent_repeats"


def test_repeats_without_acquisition_values_are_copies():
    iops, ipps, sp = _stack(3)
    iops, ipps, sp = np.vstack([iops, iops]), np.vstack([ipps, ipps]), np.vstack([sp, sp])
    temporal = [(i,) for i in range(6)]  # instance numbers differ ...
    plan = _plan(iops, ipps, sp, temporal=temporal, acquisition_keys=[(None,)] * 6)  # ... nothing else does
    assert plan.n_volumes == 1 and plan.n_slices == 3
    assert sorted(plan.dropped) == [3, 4, 5] and plan.n_repeats == 3
    assert {d: o for d, o in zip(plan.dropped, plan.originals)} == {3: 0, 4: 1, 5: 2}
    told_apart = _plan(iops, ipps, sp, temporal=temporal, acquisition_keys=[(t // 3,) for t in range(6)])
    assert told_apart.n_volumes == 2 and not told_apart.dropped


@pytest.mark.parametrize("positions", [[0, 5, 10, 20], [0, 1.25, 2.5, 205.0]])
def test_missing_slices_refused(positions):
    n = len(positions)
    ipps = np.array([[0, 0, z] for z in positions], dtype=float)
    with pytest.raises(GeometryError) as err:
        _plan(np.tile(AXIAL, (n, 1)), ipps, np.tile([1.0, 1.0], (n, 1)))
    assert err.value.code == "missing_slices"
    assert "mm" in str(err.value)


def test_irregular_spacing_resampled_at_smallest_gap():
    positions = [0, 4.22, 8.44, 9.58, 16.96, 24.34]
    ipps = np.array([[0, 0, z] for z in positions], dtype=float)
    plan = _plan(np.tile(AXIAL, (6, 1)), ipps, np.tile([1.0, 1.0], (6, 1)))
    assert plan.resample and plan.irregular and plan.step == pytest.approx(1.14)
    target = plan.target_positions()
    assert target[0] == 0 and target[-1] <= 24.34 + 1e-9 and np.allclose(np.diff(target), 1.14)


def test_gantry_tilt_detected():
    angle = np.radians(18.5)
    iop = np.array([1, 0, 0, 0, np.cos(angle), -np.sin(angle)])
    n = 5
    ipps = np.array([[0, 0, 4.0 * k] for k in range(n)])  # scanner table steps along z
    plan = _plan(np.tile(iop, (n, 1)), ipps, np.tile([0.5, 0.5], (n, 1)))
    assert plan.resample and "gantry_tilt" in plan.issues and not plan.irregular
    assert plan.tilt_deg == pytest.approx(18.5, abs=0.01)
    assert plan.step == pytest.approx(4.0 * np.cos(angle))


def test_mixed_orientation_and_missing_geometry_refused():
    iops, ipps, sp = _stack(3)
    iops = iops.copy()
    iops[1] = [0, 1, 0, 0, 0, -1]
    with pytest.raises(GeometryError) as err:
        _plan(iops, ipps, sp)
    assert err.value.code == "mixed_orientation"
    iops, ipps, sp = _stack(3)
    ipps[0, 0] = np.nan
    with pytest.raises(GeometryError) as err:
        _plan(iops, ipps, sp)
    assert err.value.code == "missing_geometry"


def test_single_slice_uses_slice_thickness():
    iops, ipps, sp = _stack(1)
    assert _plan(iops, ipps, sp, slice_thickness=3.0).step == 3.0


def test_resampled_tilted_stack_matches_world_function():
    """A field linear in world space must be reproduced exactly inside the covered region."""
    angle = np.radians(15.0)
    iop = np.array([1, 0, 0, 0, np.cos(angle), -np.sin(angle)])
    spacing = (1.0, 1.0)
    rows, cols, n = 40, 30, 8
    ipps = np.array([[0.0, 0.0, 3.0 * k] for k in range(n)])
    ipps[5:] += [0, 0, 1.5]  # and irregular spacing on top of the tilt

    def world(ipp, r, c):
        rc = geometry.as_iop(iop)
        return ipp + c[..., None] * rc[0] * spacing[1] + r[..., None] * rc[1] * spacing[0]

    rr, cc = np.mgrid[0:rows, 0:cols].astype(float)
    field = lambda w: 2.0 * w[..., 0] - 1.5 * w[..., 1] + 0.7 * w[..., 2] + 100.0  # noqa: E731
    stack = np.stack([field(world(ipps[k], rr, cc)) for k in range(n)]).astype(np.float32)
    plan = _plan(np.tile(iop, (n, 1)), ipps, np.tile(spacing, (n, 1)))
    assert plan.resample
    target = plan.target_positions()
    out = resample.resample_stack(stack, plan.positions, plan.in_plane_offsets, target, fill=-1.0)
    affine = validate.output_affine(plan, iop, ipps[plan.order[0, 0]], spacing)
    lps = np.linalg.inv(geometry.LPS_TO_RAS) @ affine
    checked = 0
    for j in range(len(target)):
        vox = np.stack([cc, rr, np.full_like(rr, j), np.ones_like(rr)], axis=-1)
        w = vox @ lps.T
        inside = out[j] != -1.0
        shrink = np.zeros_like(inside)
        shrink[2:-2, 2:-2] = True  # bilinear edges mix with fill
        mask = inside & shrink
        np.testing.assert_allclose(out[j][mask], field(w[..., :3])[mask], rtol=0, atol=1e-2)
        checked += int(mask.sum())
    assert checked > 0.5 * rows * cols * len(target)


def test_cast_like_rounds_and_clips():
    arr = np.array([1.4, 1.6, -40000.0, 40000.0], dtype=np.float32)
    np.testing.assert_array_equal(resample.cast_like(arr, np.int16), [1, 2, -32768, 32767])
