"""Schedules, optimisers, precision choices, the sharded sampler, epoch data and the metrics history."""

from __future__ import annotations

import json
import math
import os
import time

import pytest
import torch
from torch import nn

from medcore.engine.amp import choose_precision, full_precision, make_scaler, use_channels_last
from medcore.engine.data import EpochDataset
from medcore.engine.distributed import DistContext, ShardedBatchSampler, all_reduce_sum, choose_device, shard_indices
from medcore.engine.history import MetricsHistory
from medcore.engine.optim import build_optimizer
from medcore.engine.schedulers import LRSchedule, build_schedule, set_learning_rate
from medcore.transforms import make_rng


def test_poly_cosine_and_warmup_factors():
    poly = LRSchedule("poly", total_steps=100, power=0.9)
    assert poly.factor(0) == 1.0 and poly.factor(50) == pytest.approx(0.5 ** 0.9) and poly.factor(100) == 0.0
    cos = LRSchedule("cosine", total_steps=110, warmup_steps=10, min_factor=0.1)
    assert [cos.factor(i) for i in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert cos.factor(60) == pytest.approx(0.1 + 0.9 * 0.5) and cos.factor(110) == pytest.approx(0.1)
    assert LRSchedule("constant", total_steps=5).factor(3) == 1.0
    with pytest.raises(ValueError, match="unknown lr schedule kind 'step'"):
        LRSchedule("step")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['gamma'\]"):
        build_schedule({"gamma": 0.1}, 10)


def test_set_learning_rate_scales_each_group_from_its_initial_lr():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.1}])
    sched = LRSchedule("poly", total_steps=10, power=1.0)
    set_learning_rate(opt, sched, 5)
    set_learning_rate(opt, sched, 5)  # idempotent: always from initial_lr
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.05])


def test_optimizers_from_config():
    params = [nn.Parameter(torch.zeros(2))]
    sgd = build_optimizer({"name": "sgd", "lr": 0.01}, params)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.99
    adamw = build_optimizer({"name": "AdamW", "weight_decay": 0.01}, params)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.01
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        build_optimizer({"name": "lamb"}, params)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['nesterov'\]"):
        build_optimizer({"name": "adamw", "nesterov": True}, params)


def test_precision_choices_on_cpu_and_cuda(monkeypatch):
    cpu = choose_precision("cpu", "fp32")
    assert cpu.dtype is None and not cpu.needs_scaler and cpu.name == "fp32"
    assert not make_scaler(cpu).is_enabled()
    assert choose_precision("cpu", "fp16").dtype is None  # no fp16 autocast on a CPU: full precision
    bf16 = choose_precision("cpu", "bf16")
    assert (bf16.dtype, bf16.device_type, bf16.name, bf16.needs_scaler) == (torch.bfloat16, "cpu", "bf16", False)
    with bf16.autocast():
        out = [nn.Conv3d(1, 2, 3)(torch.randn(1, 1, 4, 4, 4))] * 2
    assert out[0].dtype == torch.bfloat16
    assert [o.dtype for o in full_precision(out)] == [torch.float32] * 2 and full_precision(3) == 3
    monkeypatch.setattr("medcore.engine.amp.cpu_has_native_bf16", lambda: True)
    assert choose_precision("cpu", "auto").name == "bf16"
    monkeypatch.setattr("medcore.engine.amp.cpu_has_native_bf16", lambda: False)
    assert choose_precision("cpu", "auto").name == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert choose_precision("cuda:0", "auto").dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    fp16 = choose_precision("cuda:0", "auto")
    assert fp16.dtype == torch.float16 and fp16.needs_scaler
    assert choose_precision("cuda:0", "fp32").dtype is None
    with pytest.raises(ValueError, match="unknown amp mode"):
        choose_precision("cpu", "int8")
    model = nn.Conv3d(1, 2, 3)
    assert use_channels_last(model, "cpu") is True
    assert model.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert use_channels_last(nn.Conv2d(1, 1, 1), "cpu", spatial_dims=2) is False


def test_device_choice_names_the_local_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device(0, "auto") == "cpu" and choose_device(1, "cpu") == "cpu"
    with pytest.raises(RuntimeError, match="'cuda' was asked for, but PyTorch sees no CUDA device"):
        choose_device(0, "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # torch.cuda.set_device needs an index: "cuda" and "auto" become this process's local GPU
    assert choose_device(1, "auto") == "cuda:1" and choose_device(1, "cuda") == "cuda:1"
    assert choose_device(1, "cuda:0") == "cuda:0"


@pytest.mark.parametrize("world,batch,n", [(1, 4, 16), (2, 2, 16), (2, 3, 17), (3, 2, 5)])
def test_sampler_shards_evenly_and_matches_the_multiplied_batch(world, batch, n):
    single = ShardedBatchSampler(n, batch * world, seed=5, drop_last=False)
    shards = [ShardedBatchSampler(n, batch, rank=r, world_size=world, seed=5, drop_last=False) for r in range(world)]
    for s in [single, *shards]:
        s.set_epoch(2)
    per_rank = [list(s) for s in shards]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(single)
    for k, big in enumerate(single):
        union = sorted(key for r in range(world) for key in per_rank[r][k])
        assert union == sorted(big)
    covered = {key[2] for b in single for key in b}
    assert covered == set(range(n))


def test_sampler_resume_skips_trained_batches_and_epochs_differ():
    s = ShardedBatchSampler(10, 2, seed=1, samples_per_epoch=14)
    s.set_epoch(0)
    full = list(s)
    assert len(full) == len(s) == 7
    s.set_epoch(0, start_batch=3)
    assert list(s) == full[3:]
    s.set_epoch(1)
    assert [k[2] for b in list(s) for k in b] != [k[2] for b in full for k in b]
    with pytest.raises(ValueError, match="dataset is empty"):
        ShardedBatchSampler(0, 2)


def test_epoch_dataset_draws_depend_only_on_seed_epoch_and_position():
    ds = EpochDataset([torch.zeros(3)] * 4, lambda x, rng: x + torch.rand(3, generator=rng), seed=9)
    assert torch.equal(ds[(1, 2, 0)], ds[(1, 2, 3)])  # same (epoch, position), any index: same draw
    assert not torch.equal(ds[(1, 2, 0)], ds[(1, 3, 0)])
    assert not torch.equal(ds[(1, 2, 0)], ds[(2, 2, 0)])
    # the project's one seed recipe, keyed by the sampler position
    assert torch.equal(ds[(1, 2, 0)], torch.rand(3, generator=make_rng(9, 1, 2)))


def test_single_process_helpers_need_no_process_group():
    ctx = DistContext()
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(all_reduce_sum(t, ctx), t) and ctx.is_main and not ctx.is_distributed
    assert shard_indices(5, DistContext(rank=1, world_size=2)) == [1, 3]


def test_history_writes_csv_json_and_png(tmp_path):
    h = MetricsHistory()
    h.append({"epoch": 0, "train_loss": 1.0})
    h.append({"epoch": 1, "train_loss": 0.5, "val_dice_mean": 0.7})
    h.write(tmp_path)
    assert (tmp_path / "history.csv").read_text().splitlines() == [
        "epoch,train_loss,val_dice_mean", "0,1.0,", "1,0.5,0.7"]
    assert json.loads((tmp_path / "history.json").read_text())[1]["val_dice_mean"] == 0.7
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_trainer_early_stops_and_keeps_best_checkpoint(tmp_path):
    from engine_tiny_train import TinyNet, augment, make_item

    from medcore.engine.checkpoint import load_checkpoint
    from medcore.engine.trainer import Trainer, TrainerConfig

    scores = iter([0.5, 0.7, 0.6, 0.65, 0.1, 0.9])
    evaluator = lambda model, ctx, precision: {"val_dice_mean": next(scores)}  # noqa: E731
    cfg = TrainerConfig(max_epochs=6, batch_size=2, early_stopping_patience=2, progress=False, seed=1,
                        optimizer={"name": "sgd", "lr": 0.01}, schedule={"kind": "poly", "warmup_steps": 1})
    trainer = Trainer(TinyNet(), nn.CrossEntropyLoss(), EpochDataset([make_item(i) for i in range(4)], augment),
                      tmp_path, cfg, evaluator=evaluator)
    summary = trainer.fit()
    assert summary["epochs"] == 4 and summary["stop_reason"].startswith("early stopping")
    assert summary["best_score"] == 0.7 and summary["best_epoch"] == 1
    best = load_checkpoint(tmp_path / "checkpoints" / "best.safetensors")
    assert best["best"] == {"score": 0.7, "epoch": 1, "bad_validations": 0} and best["progress"]["epoch"] == 2
    records = json.loads((tmp_path / "history.json").read_text())
    assert [r["val_dice_mean"] for r in records] == [0.5, 0.7, 0.6, 0.65]
    assert all(0.0 <= r["data_wait_fraction"] <= 1.0 and r["samples_per_s"] > 0 for r in records)
    assert math.isclose(records[-1]["lr"], 0.01 * (1 - (7 - 1) / (12 - 1)) ** 0.9)  # step 7 of 12, 1 warm-up
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"


def test_time_budget_stops_mid_epoch_and_plans_epochs(tmp_path, monkeypatch):
    from engine_tiny_train import TinyNet, augment, make_item

    from medcore.engine.run import loop_settings
    from medcore.engine.trainer import Trainer, TrainerConfig

    cfg = TrainerConfig(max_epochs=3, batch_size=2, max_train_seconds=0.0, progress=False)
    trainer = Trainer(TinyNet(), nn.CrossEntropyLoss(), EpochDataset([make_item(i) for i in range(8)], augment),
                      tmp_path, cfg)
    summary = trainer.fit()
    assert summary["global_step"] == 1 and summary["epochs"] == 1 and "time budget" in summary["stop_reason"]

    plan = {"batch_size": 2, "optimizer": {}, "schedule": {}}
    config = {"time_budget_minutes": 30, "train": {}}
    long = loop_settings(config, plan, num_train=166, num_val=42, step_seconds=1.0, world_size=1)
    assert long["samples_per_epoch"] == 166 and long["max_train_seconds"] == 1800
    assert 15 <= long["max_epochs"] <= 20 and long["val_every"] == 5  # 83 steps of ~1 s; ~4 validations (6%)
    short = loop_settings({**config, "time_budget_minutes": 1}, plan, 166, 4, 1.0, 2)
    assert short["max_epochs"] >= 4 and short["samples_per_epoch"] % 4 == 0
    fixed = loop_settings({"time_budget_minutes": None, "train": {"max_epochs": 7}}, plan, 10, 2, None, 1)
    assert fixed["max_epochs"] == 7 and "max_train_seconds" not in fixed
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert loop_settings(config, plan, 10, 2, None, 1)["num_workers"] == 1  # CPU: augment beside the step
    assert loop_settings(config, plan, 10, 2, None, 2)["num_workers"] == 0  # no spare core per rank
    fast = loop_settings(config, plan, 166, 42, 0.02, 1)  # GPU-fast steps: longer epochs, rarer checkpoints
    assert fast["samples_per_epoch"] == 2 * 750 and fast["checkpoint_every_steps"] == 1500
    assert long["checkpoint_every_steps"] == 50
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert loop_settings(config, plan, 166, 42, 0.02, 1, "cuda:0")["num_workers"] == 4
    assert loop_settings(config, plan, 166, 42, 0.02, 8, "cuda:0")["num_workers"] == 0
    assert loop_settings(config, plan, 166, 42, 0.02, 16, "cuda:0")["num_workers"] == 0


def test_lr_schedule_keeps_up_with_a_time_budget(tmp_path):
    """Steps slower than planned: the schedule follows the budget's clock and still anneals."""
    from engine_tiny_train import Pause, TinyNet, augment, make_item

    from medcore.engine.checkpoint import load_checkpoint
    from medcore.engine.trainer import Trainer, TrainerConfig

    cfg = TrainerConfig(max_epochs=20, batch_size=2, max_train_seconds=2.4, progress=False,
                        optimizer={"name": "sgd", "lr": 0.01}, schedule={"kind": "poly"})
    trainer = Trainer(TinyNet(), nn.CrossEntropyLoss(), EpochDataset([make_item(i) for i in range(8)], augment),
                      tmp_path, cfg, callbacks=[Pause(0.06)])
    summary = trainer.fit()
    assert "time budget" in summary["stop_reason"] and summary["global_step"] < 40  # 80 steps were planned
    assert trainer.schedule_position > 1.5 * summary["global_step"]  # ran ahead of the steps to anneal in time
    last_lr = json.loads((tmp_path / "history.json").read_text())[-1]["lr"]
    by_steps_alone = 0.01 * (1 - (summary["global_step"] - 1) / 80) ** 0.9
    assert last_lr < 0.7 * by_steps_alone
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.safetensors")["schedule"]
    assert saved["position"] == trainer.schedule_position and saved["rate"] == trainer.schedule_rate


def test_budget_is_spent_even_after_a_slow_calibration(tmp_path):
    """The calibration said a step takes 1 s, many times what it takes (a machine busy at the start): the
    run re-plans from the clock, trains until the budget is spent and anneals the learning rate."""
    from engine_tiny_train import Pause, TinyNet, augment, dice_evaluator, make_item

    from medcore.engine.run import loop_settings
    from medcore.engine.trainer import Trainer, TrainerConfig

    budget_s, real_step_s = 3.0, 0.02
    plan = {"batch_size": 2, "optimizer": {"name": "sgd", "lr": 0.01}, "schedule": {"kind": "poly"}}
    settings = loop_settings({"time_budget_minutes": budget_s / 60, "train": {}}, plan, 8, 2,
                             step_seconds=1.0, world_size=1)
    planned_steps = settings["max_epochs"] * settings["samples_per_epoch"] // 2
    settings.update(progress=False, num_workers=0)
    items = [make_item(i) for i in range(8)]
    trainer = Trainer(TinyNet(), nn.CrossEntropyLoss(), EpochDataset(items, augment), tmp_path,
                      TrainerConfig.from_dict(settings), evaluator=dice_evaluator(items[:2]),
                      callbacks=[Pause(real_step_s)])
    started = time.perf_counter()
    summary = trainer.fit()
    wall = time.perf_counter() - started
    assert 0.95 * budget_s <= wall <= budget_s + 2.0, wall  # the upper bound allows for a busy test machine
    assert "time budget" in summary["stop_reason"] and summary["global_step"] > 2 * planned_steps
    assert summary["epochs"] > settings["max_epochs"]
    lrs = [r["lr"] for r in json.loads((tmp_path / "history.json").read_text())]
    assert lrs[-1] < 0.15 * 0.01 and lrs == sorted(lrs, reverse=True)  # annealed, never back up


def test_plan_takes_label_names_from_the_datalist(tmp_path):
    from medcore.engine.presets import make_plan
    from medcore.engine.run import datalist_label_names

    ds = tmp_path / "dataset.json"
    ds.write_text(json.dumps({"labels": {"0": "background", "1": "liver", "2": "spleen"}, "training": []}))
    names = datalist_label_names(ds)
    assert names == {"background": 0, "liver": 1, "spleen": 2}
    fp = {"median_spacing": [1.0, 1.0, 2.0], "median_shape": [32, 32, 16], "labels_present": [0, 1, 2],
          "spacing_varies": False, "foreground_intensity": {"p00_5": -100.0, "p99_5": 200.0, "mean": 40.0, "std": 50.0},
          "foreground_max_ratio": 1.0}
    plan = make_plan(fp, "synthetic_ct", overrides={"labels": names})
    assert plan["labels"] == names and plan["num_classes"] == 3
    ds.write_text(json.dumps({"labels": {"one": "liver"}}))
    with pytest.raises(ValueError, match="labels"):
        datalist_label_names(ds)
    assert datalist_label_names(tmp_path / "missing.json") == {}


def test_training_pipeline_is_library_transforms_and_replays_bit_for_bit():
    from medcore.engine.presets import AUGMENTATION, augmentation_plan
    from medcore.engine.segmentation import TrainingSample, training_transforms
    from medcore.io import Image
    from medcore.transforms import REGISTRY, Compose, Keyed, from_config, replay

    g = torch.Generator().manual_seed(3)
    item = {"image": torch.randn(1, 20, 24, 18, generator=g), "label": torch.zeros(20, 24, 18, dtype=torch.uint8)}
    item["label"][5:12, 6:15, 4:10], item["label"][8:10, 9:12, 5:8] = 1, 2
    every = {name: {"prob": 1.0} for name in AUGMENTATION}
    plan = {"patch_size": [12, 16, 10], "foreground_oversample": 0.5, "augmentation": augmentation_plan(every)}
    pipeline = training_transforms(plan)
    assert isinstance(pipeline, Compose) and all(isinstance(s, Keyed) for s in pipeline.transforms)
    assert all(REGISTRY[type(s.transform).__name__] is type(s.transform) for s in pipeline.transforms)
    assert from_config(json.loads(json.dumps(pipeline.config()))) == pipeline
    sample = TrainingSample(pipeline)
    a, b = sample(item, make_rng(0, 2, 5)), sample(item, make_rng(0, 2, 5))
    assert a["image"].shape == (1, 12, 16, 10) and a["label"].shape == (1, 12, 16, 10)
    assert a["label"].dtype == torch.long
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], sample(item, make_rng(0, 2, 6))["image"])
    images = sample.images(item, make_rng(0, 2, 5))
    names = [o["name"] for o in images["image"].ops]
    assert names[0] == "Resample" and [p["name"] for p in images["image"].ops[0]["fused"]] == [
        "Resample", "Affine", "Affine", "Flip"]  # crop, rotation, scaling and mirroring: one resample
    assert {"GaussianNoise", "GaussianSmooth", "ScaleIntensity", "ScaleIntensityFixedMean", "SimulateLowResolution",
            "AdjustContrast"} <= set(names)
    for key in ("image", "label"):  # the recorded ops replay the sample bit for bit from the cached case
        start = Image(item[key] if key == "image" else item[key][None])
        assert torch.equal(replay(start, images[key].ops).data, images[key].data)
    assert torch.equal(images["image"].data, a["image"]) and torch.equal(images["label"].data.long(), a["label"])
    with pytest.raises(ValueError, match="no entry 'elastic'"):
        augmentation_plan({"elastic": {"prob": 0.1}})
    with pytest.raises(ValueError, match="unknown field"):
        augmentation_plan({"gamma": {"p": 0.1}})
