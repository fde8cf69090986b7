"""Model directory round trip, whole-volume prediction and the ``medcore predict`` CLI."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medcore.cli import main as cli_main
from medcore.inferers import (
    FORMAT_VERSION,
    load_model_dir,
    make_spec,
    predict_volume,
    read_spec,
    save_model_dir,
    sliding_window_inference,
)
from medcore.io import Image
from medcore.networks import build_network

NET = {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2],
       "num_res_units": 1}
INFER = {"roi_size": [16, 16, 16], "overlap": 0.25, "mode": "gaussian", "sw_batch_size": 2}
PRE = [{"name": "Orientation", "axcodes": "RAS"}, {"name": "Spacing", "pixdim": [1.5, 1.5, 2.0]},
       {"name": "NormalizeIntensity"}]


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network(NET).eval()


@pytest.fixture()
def model_dir(tmp_path):
    return save_model_dir(tmp_path / "model", tiny_model(), preprocessing=PRE, inference=INFER,
                          labels={"background": 0, "a": 1, "b": 2}, provenance={"run": "test", "epochs": 0})


def test_round_trip_same_outputs(model_dir):
    model, spec = load_model_dir(model_dir)
    raw = json.loads((model_dir / "model.json").read_text())
    assert raw["format_version"] == FORMAT_VERSION and raw["network"]["name"] == "unet"
    assert raw["preprocessing"] == PRE and raw["labels"]["b"] == 2 and raw["inference"]["roi_size"] == [16, 16, 16]
    assert raw["inference"]["tta"] is False  # defaults are filled in and written
    assert (model_dir / "weights.safetensors").read_bytes()[:8] != b"\x80\x02\x8a\x0al\xfc\x9c"  # not a pickle
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), tiny_model()(x))
    # saving again over an existing directory replaces it completely
    save_model_dir(model_dir, tiny_model(1), inference=INFER)
    assert read_spec(model_dir).preprocessing == []
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".")]


def test_model_dir_errors_are_clear(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_model_dir(tmp_path / "missing")
    spec_path = model_dir / "model.json"
    raw = json.loads(spec_path.read_text())
    spec_path.write_text(json.dumps({**raw, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ValueError, match="newer"):
        load_model_dir(model_dir)
    spec_path.write_text(json.dumps({**raw, "network": {**NET, "channels": [4, 16]}}))
    with pytest.raises(ValueError, match="do not fit"):
        load_model_dir(model_dir)
    spec_path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model_dir(model_dir)
    with pytest.raises(ValueError, match="inference.mode"):
        make_spec(NET, inference={"mode": "cosine"})
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a model directory"):
        save_model_dir(tmp_path / "precious", tiny_model())
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match=r"\.config"):
        save_model_dir(tmp_path / "m2", torch.nn.Conv3d(1, 1, 1))


def test_predict_without_preprocessing_equals_manual_chain():
    model = tiny_model()
    spec = make_spec(NET, inference=INFER)
    img = Image(torch.randn(1, 20, 18, 23), torch.diag(torch.tensor([0.8, 0.8, 2.5, 1.0], dtype=torch.float64)))
    out = predict_volume(model, spec, img)
    with torch.inference_mode():
        logits = sliding_window_inference(img.data[None], (16, 16, 16), model, overlap=0.25, mode="gaussian")
    expected = torch.softmax(logits, 1).argmax(1).to(torch.uint8)
    assert out.data.dtype == torch.uint8 and torch.equal(out.data, expected)
    assert torch.equal(out.affine, img.affine)


def threshold_net() -> torch.nn.Module:
    """Logits (0, 10x - 5): label 1 exactly where the intensity is above 0.5."""
    net = torch.nn.Conv3d(1, 2, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([0.0, 10.0]).view(2, 1, 1, 1, 1))
        net.bias.copy_(torch.tensor([0.0, -5.0]))
    return net.eval()


@pytest.mark.parametrize("tta", [False, True])
def test_prediction_lands_on_the_original_grid(tta):
    # an asymmetric box in an LPS-oriented, anisotropic image: a wrong inversion misplaces it
    data = torch.zeros(1, 30, 26, 12)
    data[0, 3:14, 15:24, 2:7] = 1.0
    affine = torch.tensor([[-0.9, 0, 0, 10], [0, -1.1, 0, -5], [0, 0, 3.0, 2], [0, 0, 0, 1]], dtype=torch.float64)
    img = Image(data, affine)
    spec = make_spec({"name": "threshold"}, preprocessing=PRE[:2],
                     inference={**INFER, "roi_size": [12, 12, 12], "tta": tta})
    out = predict_volume(threshold_net(), spec, img)
    assert out.spatial_shape == img.spatial_shape and torch.equal(out.affine, img.affine)
    truth = data[0] > 0
    pred = out.data[0] > 0
    dice = 2 * (truth & pred).sum() / (truth.sum() + pred.sum())
    assert dice > 0.9, float(dice)
    centre = lambda m: m.nonzero().double().mean(0)  # noqa: E731
    torch.testing.assert_close(centre(pred), centre(truth), atol=0.5, rtol=0)


def write_nifti(path, shape, seed, affine=None):
    rng = np.random.default_rng(seed)
    nib.save(nib.Nifti1Image(rng.standard_normal(shape).astype(np.float32),
                             np.diag([1.2, 1.0, 2.0, 1.0]) if affine is None else affine), str(path))


def test_cli_folder_with_a_bad_file(tmp_path, model_dir, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_nifti(inputs / "case_a.nii.gz", (20, 22, 9), 0)
    write_nifti(inputs / "case_b.nii", (17, 19, 11), 1)
    (inputs / "broken.nii.gz").write_bytes(b"not a nifti at all")
    rc = cli_main(["predict", str(model_dir), str(inputs), str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "broken.nii.gz" in err and "1 of 3" in err
    for name, shape in [("case_a", (20, 22, 9)), ("case_b", (17, 19, 11))]:
        nii = nib.load(str(tmp_path / "out" / f"{name}.nii.gz"))
        assert nii.shape == shape and nii.get_data_dtype() == np.uint8
        np.testing.assert_allclose(nii.affine, np.diag([1.2, 1.0, 2.0, 1.0]), atol=1e-6)
        assert set(np.unique(np.asarray(nii.dataobj))) <= {0, 1, 2}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case_a.nii.gz", "case_b.nii.gz"]


def test_cli_single_file_tta_and_bad_model(tmp_path, model_dir, capsys):
    write_nifti(tmp_path / "one.nii.gz", (18, 18, 10), 2)
    assert cli_main(["predict", str(model_dir), str(tmp_path / "one.nii.gz"), str(tmp_path / "o"), "--tta",
                     "--sw-batch-size", "3", "--quiet"]) == 0
    assert (tmp_path / "o" / "one.nii.gz").is_file()
    assert cli_main(["predict", str(tmp_path), str(tmp_path / "one.nii.gz"), str(tmp_path / "o")]) == 2
    assert "model.json" in capsys.readouterr().err
    assert cli_main(["predict", str(model_dir), str(tmp_path / "nope.nii.gz"), str(tmp_path / "o")]) == 2


def test_cli_on_real_hippocampus_case(shared_data, tmp_path, model_dir):
    source = shared_data / "hippocampus" / "imagesTr" / "hippocampus_004.nii.gz"
    assert cli_main(["predict", str(model_dir), str(source), str(tmp_path / "o"), "--quiet"]) == 0
    original = nib.load(str(source))
    out = nib.load(str(tmp_path / "o" / "hippocampus_004.nii.gz"))
    assert out.shape == original.shape
    np.testing.assert_allclose(out.affine, original.affine, atol=1e-5)


def test_channel_argmax_equals_torch_argmax_with_ties():
    from medcore.inferers.predict import channel_argmax

    scores = torch.randint(0, 3, (4, 9, 8, 7)).float()  # many ties: the first maximum must win
    assert torch.equal(channel_argmax(scores), scores.argmax(0, keepdim=True).to(torch.uint8))


def test_channels_last_model_from_model_dir_predicts_the_same(model_dir):
    from medcore.inferers.predict import is_channels_last, predict_probabilities

    cl_model, spec = load_model_dir(model_dir)  # CPU: channels-last by default
    cf_model, _ = load_model_dir(model_dir, channels_last=False)
    assert is_channels_last(cl_model) and not is_channels_last(cf_model)
    x = torch.randn(1, 21, 19, 17)
    a = predict_probabilities(cl_model, x, spec.inference, torch.device("cpu"))
    b = predict_probabilities(cf_model, x, spec.inference, torch.device("cpu"))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_cli_on_real_dicom_series(shared_data, tmp_path, model_dir, capsys):
    from medcore.data import load_volume

    series = shared_data / "dicom" / "dicom2nifti" / "anatomical" / "001"
    assert cli_main(["predict", str(model_dir), str(series), str(tmp_path / "o"), "--quiet"]) == 0
    written = sorted((tmp_path / "o").iterdir())
    assert len(written) == 1 and written[0].name.startswith("series-")  # no patient data in the name
    original = load_volume(series)
    out = nib.load(str(written[0]))
    assert out.shape == original.spatial_shape
    np.testing.assert_allclose(out.affine, original.affine.numpy(), atol=1e-5)
