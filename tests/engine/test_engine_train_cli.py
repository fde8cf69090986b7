"""`medcore train` end to end on the synthetic CT preset (tiny), plans from real hippocampus headers, config errors."""

from __future__ import annotations

import json

import pytest
import torch

from medcore.cli import main
from medcore.engine.config import load_config
from medcore.engine.presets import find_msd_cases, fingerprint, make_plan, split_cases


def test_train_cli_synthetic_ct_writes_plan_history_summary_and_a_predictable_model_dir(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("preset: synthetic_ct\nmax_cases: 6\nthreads: 1\nsplit: {fraction: 0.34}\n"
                      "train: {max_epochs: 2, samples_per_epoch: 4, checkpoint_every_steps: 1, progress: false}\n"
                      "plan: {base_filters: 4}\n")
    run_dir = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        assert main(["train", "--config", str(config), "--run-dir", str(run_dir), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 2 and summary["global_step"] == 4
    assert summary["train_cases"] == 4 and summary["val_cases"] == 2
    assert set(summary["validation"]) >= {"val_dice_organ", "val_dice_lesion", "val_hd95_organ", "val_dice_mean"}
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["target_spacing"] == [1.5, 1.5, 3.0] and plan["normalization"]["kind"] == "ct"
    assert plan["network"]["name"] == "dynunet" and plan["network"]["strides"][-1] == [2, 2, 1]
    assert any("median spacing" in r for r in plan["reasons"])
    split = json.loads((run_dir / "split.json").read_text())
    assert not set(split["train"]) & set(split["val"])
    for name in ("history.csv", "history.json", "curves.png", "checkpoints/last.safetensors",
                 "checkpoints/best.safetensors", "model/model.json", "model/weights.safetensors"):
        assert (run_dir / name).is_file(), name

    import medcore.networks.dynunet  # noqa: F401  (registration, until medcore.networks imports it)
    from medcore.inferers.model_dir import load_model_dir
    from medcore.inferers.predict import predict_file

    model, spec = load_model_dir(summary["model_dir"])
    assert (
        spec.labels == {"background": 0, "organ": 1, "lesion": 2} and spec.inference["roi_size"] == plan["patch_size"]
    )
    case = sorted((run_dir / "data" / "imagesTr").glob("*.nii.gz"))[0]
    predict_file(model, spec, case, tmp_path / "pred.nii.gz")
    import nibabel as nib

    out, ref = nib.load(tmp_path / "pred.nii.gz"), nib.load(case)
    assert out.shape == ref.shape and (out.affine == ref.affine).all()

    # a second invocation resumes the finished run and changes nothing
    before = (run_dir / "checkpoints" / "last.safetensors").read_bytes()
    try:
        assert main(["train", "--config", str(config), "--run-dir", str(run_dir), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert json.loads((run_dir / "summary.json").read_text())["resumed"] is True
    assert (run_dir / "checkpoints" / "last.safetensors").read_bytes() == before


def test_config_errors_are_clear(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"preset": "hippocampus", "epochs": 3}')
    assert main(["train", "--config", str(bad), "--run-dir", str(tmp_path / "r")]) == 2
    assert "bad.json: unknown field(s) ['epochs']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="cannot be parsed"):
        (tmp_path / "broken.yaml").write_text("preset: [")
        load_config(tmp_path / "broken.yaml")
    assert main(["train", "--config", str(tmp_path / "nope.json"), "--run-dir", str(tmp_path / "r")]) == 2
    unknown = tmp_path / "u.json"
    unknown.write_text('{"preset": "liver"}')
    assert main(["train", "--config", str(unknown), "--run-dir", str(tmp_path / "r")]) == 1
    assert "unknown preset 'liver'" in capsys.readouterr().err


def test_hippocampus_plan_from_real_data(shared_data):
    cases = find_msd_cases(shared_data / "hippocampus")
    assert len(cases) == 208
    train, val = split_cases(cases, 0.2, seed=0)
    assert len(val) == 42 and len(train) == 166 and split_cases(cases, 0.2, seed=0)[1] == val
    fold_vals = [split_cases(cases, folds=5, fold=f)[1] for f in range(5)]
    assert sorted(c["id"] for v in fold_vals for c in v) == sorted(c["id"] for c in cases)
    fp = fingerprint(train, max_intensity_cases=16)
    assert fp["median_spacing"] == [1.0, 1.0, 1.0] and fp["labels_present"] == [0, 1, 2]
    plan = make_plan(fp, "hippocampus", "cpu")
    assert plan["patch_size"] == [40, 56, 40] and not plan["resample"]  # nnU-Net picks 40x56x40 too
    assert plan["normalization"] == {"kind": "zscore"} and plan["num_classes"] == 3
    assert plan["network"]["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    gpu = make_plan(fp, "hippocampus", "cuda:0")
    assert gpu["network"]["filters"][0] == 32


def test_preprocessing_cache_and_augmentation_on_real_cases(shared_data, tmp_path):
    from medcore.data import Dataset
    from medcore.engine.segmentation import (
        CachedCases,
        CasePreprocess,
        TrainingSample,
        case_dataset,
        preprocessing_configs,
        training_transforms,
    )
    from medcore.transforms import make_rng

    cases = find_msd_cases(shared_data / "hippocampus")[:3]
    plan = make_plan(fingerprint(cases), "hippocampus")
    pre = preprocessing_configs(plan)
    dataset = case_dataset(cases, pre, tmp_path / "c")
    cached = CachedCases(dataset, [0, 1, 2])
    assert len(cached) == 3 and cached[1]["id"] == cases[1]["id"] and cached.ids == [c["id"] for c in cases]
    item = cached[0]
    assert item["image"].dtype == torch.float32 and abs(float(item["image"].mean())) < 1e-4
    assert item["label"].dtype == torch.uint8 and set(item["label"].unique().tolist()) == {0, 1, 2}
    assert len(list((tmp_path / "c").glob("*.safetensors"))) == 2  # built on first use: cases 0 and 1 so far
    # the cached entry is exactly what the uncached medcore.data pipeline computes
    plain = Dataset(cases, CasePreprocess(pre), image_keys=("image", "label"))[0]
    assert torch.equal(plain["image"], item["image"]) and torch.equal(plain["label"], item["label"])
    aug = TrainingSample(training_transforms({**plan, "foreground_oversample": 1.0}))
    a, b = aug(item, make_rng(0, 0, 0)), aug(item, make_rng(0, 0, 0))
    assert a["image"].shape == (1, 40, 56, 40) and a["label"].shape == (1, 40, 56, 40)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert (a["label"] > 0).any()


def test_a_bad_case_is_skipped_with_its_reason_not_fatal(shared_data, tmp_path):
    from medcore.engine.run import prepare_run

    root = shared_data / "hippocampus"
    entries = [{"image": str(root / "imagesTr" / f"hippocampus_{n}.nii.gz"),
                "label": str(root / "labelsTr" / f"hippocampus_{n}.nii.gz")} for n in ("004", "006", "007")]
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file")
    entries.append({"image": str(broken), "label": entries[0]["label"]})
    (tmp_path / "dataset.json").write_text(json.dumps({"training": entries}))
    config = {"datalist": str(tmp_path / "dataset.json"), "split": {"fraction": 0.25}, "cache_dir": str(tmp_path / "c")}
    prep = prepare_run(config)
    manifest = prep.build_cache(progress=False)
    train, val = prep.open_cache()
    skipped = train.skipped + val.skipped
    assert sorted(train.ids + val.ids) == ["hippocampus_004", "hippocampus_006", "hippocampus_007"]
    assert len(skipped) == 1 and skipped[0]["id"] == "broken" and "broken.nii.gz" in skipped[0]["reason"]
    assert manifest["train"]["skipped"] + manifest["val"]["skipped"] == skipped
    # the next run reads the manifest: nothing is preprocessed again, the skip is remembered
    again = prepare_run(config)
    assert again.cache_key == prep.cache_key and again.build_cache(progress=False) == manifest
    assert again.dataset.stats == {"hits": 0, "misses": 0, "rebuilt": 0}
    assert sum((part.skipped for part in again.open_cache()), []) == skipped


def test_cases_from_a_datalist(shared_data, tmp_path):
    from medcore.engine.config import resolve_config
    from medcore.engine.distributed import DistContext
    from medcore.engine.run import resolve_cases

    root = shared_data / "hippocampus"
    entries = [{"image": str(root / "imagesTr" / f"hippocampus_{n}.nii.gz"),
                "label": str(root / "labelsTr" / f"hippocampus_{n}.nii.gz")} for n in ("004", "006")]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": entries}))
    cases = resolve_cases(resolve_config({"datalist": str(tmp_path / "dataset.json")}), tmp_path, DistContext())
    assert [c["id"] for c in cases] == ["hippocampus_004", "hippocampus_006"]


def test_shipped_example_configs_load():
    from pathlib import Path

    import medcore.engine

    folder = Path(medcore.engine.__file__).parent / "configs"
    assert load_config(folder / "hippocampus.yaml")["preset"] == "hippocampus"
    assert load_config(folder / "synthetic_ct.yaml")["train"]["max_epochs"] == 4
