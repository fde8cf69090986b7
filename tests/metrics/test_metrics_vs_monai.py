"""medcore metrics against MONAI 1.6 (oracle) and a brute-force all-pairs reference."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from medcore import metrics as M

monai_metrics = pytest.importorskip("monai.metrics")


def random_masks(shape, seed, empty=()):
    """(B, C, *spatial) bool blobs; channels listed in ``empty`` as (b, c, which) are emptied."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=[0, 0] + [1.2] * (len(shape) - 2))
    pred = noise > 0.05
    ref = (noise + 0.15 * rng.standard_normal(shape)) > 0.0
    for b, c, which in empty:
        if which in ("pred", "both"):
            pred[b, c] = False
        if which in ("ref", "both"):
            ref[b, c] = False
    return torch.from_numpy(pred), torch.from_numpy(ref)


EMPTY = [(0, 1, "pred"), (1, 0, "ref"), (1, 2, "both")]
SPACINGS = [(1.0, 1.0, 1.0), (0.7, 1.3, 3.0)]


def close(a, b, tol=1e-6):
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    assert a.shape == b.shape
    assert torch.equal(torch.isnan(a), torch.isnan(b)), (a, b)
    assert torch.equal(torch.isinf(a), torch.isinf(b)), (a, b)
    fin = torch.isfinite(a)
    torch.testing.assert_close(a[fin], b[fin], rtol=tol, atol=tol)


@pytest.mark.parametrize("ignore_empty", [True, False])
def test_dice_iou_match_monai(ignore_empty):
    pred, ref = random_masks((2, 3, 13, 11, 9), 0, EMPTY)
    close(M.dice(pred, ref, ignore_empty), monai_metrics.compute_dice(pred.float(), ref.float(),
                                                                       include_background=True,
                                                                       ignore_empty=ignore_empty))
    close(M.iou(pred, ref, ignore_empty), monai_metrics.compute_iou(pred.float(), ref.float(),
                                                                     include_background=True,
                                                                     ignore_empty=ignore_empty))


def test_confusion_rates_match_monai():
    pred, ref = random_masks((2, 3, 10, 12, 8), 1, EMPTY)
    cm = monai_metrics.get_confusion_matrix(pred.float(), ref.float(), include_background=True)
    for name, fn in [("sensitivity", M.sensitivity), ("specificity", M.specificity), ("precision", M.precision)]:
        close(fn(pred, ref), monai_metrics.compute_confusion_matrix_metric(name, cm))
    close(M.confusion_counts(pred, ref)[..., [0, 1, 2, 3]], cm)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_surface_metrics_match_monai(spacing):
    pred, ref = random_masks((2, 3, 14, 12, 10), 2, EMPTY)
    p, r = pred.float(), ref.float()
    ours = M.surface_metrics(pred, ref, spacing=spacing, percentile=95, tolerance=[1.0, 2.0, 0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = monai_metrics.compute_hausdorff_distance(p, r, include_background=True, spacing=spacing)
        hd95 = monai_metrics.compute_hausdorff_distance(p, r, include_background=True, spacing=spacing,
                                                        percentile=95)
        hd_dir = monai_metrics.compute_hausdorff_distance(p, r, include_background=True, spacing=spacing,
                                                          directed=True)
        assd = monai_metrics.compute_average_surface_distance(p, r, include_background=True, symmetric=True,
                                                              spacing=spacing)
        asd = monai_metrics.compute_average_surface_distance(p, r, include_background=True, symmetric=False,
                                                             spacing=spacing)
        nsd = monai_metrics.compute_surface_dice(p, r, [1.0, 2.0, 0.5], include_background=True, spacing=spacing)
    close(ours["hausdorff"], hd)
    # MONAI computes the quantile rank q*(n-1) in float32 (ulp 6e-5 at n~900): a few 1e-6 off the
    # exact value, which test_surface_distances_equal_brute_force checks to 1e-12
    close(ours["hausdorff_percentile"], hd95, tol=2e-5)
    close(ours["assd"], assd)
    close(ours["surface_dice"], nsd)
    close(M.hausdorff_distance(pred, ref, spacing, directed=True), hd_dir)
    close(M.average_surface_distance(pred, ref, spacing, symmetric=False), asd)
    close(M.hausdorff_distance(pred, ref, spacing, percentile=95), hd95, tol=2e-5)
    close(M.surface_dice(pred, ref, [1.0, 2.0, 0.5], spacing), nsd)


def test_surface_metrics_2d_per_case_spacing_match_monai():
    pred, ref = random_masks((2, 2, 17, 15), 3)
    spacing = [[0.5, 2.0], [1.5, 0.8]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd95 = monai_metrics.compute_hausdorff_distance(pred.float(), ref.float(), include_background=True,
                                                        spacing=spacing, percentile=95)
    close(M.hausdorff_distance(pred, ref, spacing, percentile=95), hd95, tol=2e-5)


def brute_force(pred: np.ndarray, ref: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: scipy erosion for surfaces (zero border), all-pairs distances."""
    structure = ndimage.generate_binary_structure(pred.ndim, 1)
    sp = pred & ~ndimage.binary_erosion(pred, structure, border_value=0)
    sr = ref & ~ndimage.binary_erosion(ref, structure, border_value=0)
    a, b = np.argwhere(sp) * spacing, np.argwhere(sr) * spacing
    d = cdist(a, b)
    return d.min(1), d.min(0)


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_surface_distances_equal_brute_force(seed):
    pred, ref = random_masks((1, 1, 9, 11, 7), seed)
    spacing = np.array([0.8, 1.7, 2.5])
    p, r = pred[0, 0].numpy(), ref[0, 0].numpy()
    d = M.surface_distances(p, r, spacing)
    bp, br = brute_force(p, r, spacing)
    np.testing.assert_allclose(d.pred_to_ref, bp, rtol=0, atol=1e-12)
    np.testing.assert_allclose(d.ref_to_pred, br, rtol=0, atol=1e-12)
    assert d.hausdorff() == pytest.approx(max(bp.max(), br.max()), abs=1e-12)
    assert d.hausdorff(95) == pytest.approx(max(np.percentile(bp, 95), np.percentile(br, 95)), abs=1e-12)
    assert d.average() == pytest.approx(np.concatenate([bp, br]).mean(), abs=1e-12)
    tol = 1.7
    assert d.surface_dice(tol) == pytest.approx(((bp <= tol).sum() + (br <= tol).sum()) / (bp.size + br.size))


def test_mask_touching_border_counts_border_as_surface():
    mask = np.ones((4, 5, 3), bool)
    surf = M.mask_surface(mask)
    assert surf.sum() == mask.size - 2 * 3 * 1  # only the 2x3x1 interior is not surface
    assert not surf[1:3, 1:4, 1].any()


def test_empty_conventions():
    z = torch.zeros(1, 1, 6, 6, 6, dtype=torch.bool)
    o = z.clone()
    o[0, 0, 2:4, 2:4, 2:4] = True
    both = M.surface_metrics(z, z, spacing=(1, 1, 2))
    assert all(torch.isnan(v).all() for v in both.values())
    one = M.surface_metrics(o, z, spacing=(1, 1, 2))
    assert torch.isinf(one["hausdorff"]).all() and torch.isinf(one["assd"]).all()
    assert one["surface_dice"].item() == 0.0 and torch.isnan(one["hausdorff_percentile"]).all()
    assert torch.isnan(M.dice(o, z)).all() and M.dice(o, z, ignore_empty=False).item() == 0.0
    assert M.dice(z, z, ignore_empty=False).item() == 1.0 and M.dice(z, o).item() == 0.0
    assert torch.isnan(M.precision(z, o)).all() and M.sensitivity(z, o).item() == 0.0


def test_bad_input_errors_are_clear():
    with pytest.raises(ValueError, match="same shape"):
        M.dice(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 4))
    with pytest.raises(ValueError, match="binarised"):
        M.dice(torch.full((1, 1, 3, 3), 0.5), torch.zeros(1, 1, 3, 3))
    with pytest.raises(ValueError, match="spacing"):
        M.hausdorff_distance(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 3, 3), spacing=(1, 0))
    with pytest.raises(ValueError, match="one_hot"):
        M.dice(torch.zeros(3, 3), torch.zeros(3, 3))


def test_one_hot():
    labels = torch.tensor([[[0, 1], [2, 1]]])
    oh = M.one_hot(labels, 3)
    assert oh.shape == (1, 3, 2, 2) and oh.sum() == 4 and oh[0, 2, 1, 0]
    with pytest.raises(ValueError, match="labels"):
        M.one_hot(labels, 2)


def test_case_metrics_on_label_maps_agree_with_the_one_hot_functions():
    rng = np.random.default_rng(7)
    noise = ndimage.gaussian_filter(rng.standard_normal((16, 14, 12)), 1.5)
    ref = np.digitize(noise, [-0.05, 0.08]).astype(np.uint8)  # labels 0, 1, 2
    pred = np.digitize(noise + 0.03 * rng.standard_normal(noise.shape), [-0.05, 0.08]).astype(np.uint8)
    spacing = (1.0, 0.6, 2.2)
    table = M.case_metrics(pred, torch.from_numpy(ref)[None], spacing, {"anterior": 1, "posterior": 2, "absent": 3},
                           tolerance=1.5)
    p1, r1 = M.one_hot(torch.from_numpy(pred)[None].long(), 4), M.one_hot(torch.from_numpy(ref)[None].long(), 4)
    surf = M.surface_metrics(p1, r1, spacing, tolerance=1.5)
    for name, c in [("anterior", 1), ("posterior", 2)]:
        assert table[name]["dice"] == pytest.approx(float(M.dice(p1, r1)[0, c]))
        assert table[name]["precision"] == pytest.approx(float(M.precision(p1, r1)[0, c]))
        assert table[name]["hausdorff_percentile"] == pytest.approx(float(surf["hausdorff_percentile"][0, c]))
        assert table[name]["surface_dice"] == pytest.approx(float(surf["surface_dice"][0, c]))
    assert np.isnan(table["absent"]["dice"]) and np.isnan(table["absent"]["assd"])
    with pytest.raises(ValueError, match="differ in shape"):
        M.case_metrics(pred, ref[:-1], spacing)


def test_real_hippocampus_labels_match_monai(shared_data):
    import nibabel as nib

    nii = nib.load(str(shared_data / "hippocampus" / "labelsTr" / "hippocampus_004.nii.gz"))
    ref = torch.from_numpy(np.rint(np.asarray(nii.dataobj)).astype(np.int64))
    pred = torch.roll(ref, shifts=(1, -1), dims=(0, 2))  # a prediction off by one voxel on two axes
    pred[ref.shape[0] // 2:, :, : ref.shape[2] // 3] = 0  # and missing part of the structure
    spacing = tuple(float(z) for z in nii.header.get_zooms()[:3])
    p, r = M.one_hot(pred[None], 3)[:, 1:], M.one_hot(ref[None], 3)[:, 1:]
    ours = M.surface_metrics(p, r, spacing=spacing, tolerance=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd95 = monai_metrics.compute_hausdorff_distance(p.float(), r.float(), include_background=True,
                                                        percentile=95, spacing=spacing)
        assd = monai_metrics.compute_average_surface_distance(p.float(), r.float(), include_background=True,
                                                              symmetric=True, spacing=spacing)
        nsd = monai_metrics.compute_surface_dice(p.float(), r.float(), [1.0, 1.0], include_background=True,
                                                 spacing=spacing)
    close(ours["hausdorff_percentile"], hd95, tol=2e-5)
    close(ours["assd"], assd)
    close(ours["surface_dice"], nsd)
    close(M.dice(p, r), monai_metrics.compute_dice(p.float(), r.float(), include_background=True))
    assert (ours["surface_dice"] < 1).all() and (ours["assd"] > 0).all()
