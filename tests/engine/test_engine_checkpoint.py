"""Acceptance 3: checkpoints round-trip exactly; corrupt, truncated or foreign files are refused clearly."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medcore.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _state() -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 2, 3), nn.Conv3d(2, 2, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(1, 1, 5, 5, 5)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
            "numpy": np.random.get_state(), "python": random.getstate(), "epoch": 3, "nan": float("nan"),
            "bf16": torch.ones(3, dtype=torch.bfloat16), "pair": (1, "a"), "int_keys": {0: "x", 5: [1.5]}}


def test_round_trip_is_exact(tmp_path):
    state = _state()
    path = save_checkpoint(state, tmp_path / "c.safetensors")
    back = load_checkpoint(path)
    for key, value in state["model"].items():
        assert torch.equal(back["model"][key], value)
    assert back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    for i, s in state["optimizer"]["state"].items():
        for k, v in s.items():
            assert torch.equal(back["optimizer"]["state"][i][k], v)
    assert torch.equal(back["rng"], state["rng"])
    assert back["numpy"][0] == "MT19937" and np.array_equal(back["numpy"][1], state["numpy"][1])
    assert back["python"] == state["python"]
    assert back["pair"] == (1, "a") and back["int_keys"] == {0: "x", 5: [1.5]} and np.isnan(back["nan"])
    assert back["bf16"].dtype == torch.bfloat16
    # states load back into live objects
    np.random.set_state(back["numpy"])
    random.setstate(back["python"])
    torch.set_rng_state(back["rng"])
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_unstorable_object_is_rejected_at_save(tmp_path):
    with pytest.raises(TypeError, match=r"cannot store object at \.hook"):
        save_checkpoint({"hook": object()}, tmp_path / "c.safetensors")
    assert not (tmp_path / "c.safetensors").exists()


@pytest.mark.parametrize("cut", [0, 5, 100, -50, -1])
def test_truncated_checkpoint_is_refused_naming_the_file(tmp_path, cut):
    path = save_checkpoint(_state(), tmp_path / "last.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data[:len(data) + cut])
    with pytest.raises(CheckpointError, match=r"last\.safetensors.*(truncated|corrupted)"):
        load_checkpoint(path)


def test_flipped_byte_in_tensor_data_is_refused(tmp_path):
    path = save_checkpoint(_state(), tmp_path / "last.safetensors")
    data = bytearray(path.read_bytes())
    data[-20] ^= 0x01  # inside the tensor payload: the safetensors layout alone would not notice
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"last\.safetensors failed its SHA-256 check"):
        load_checkpoint(path)


def test_garbage_and_foreign_safetensors_are_refused(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_checkpoint(garbage)
    from safetensors.torch import save_file

    foreign = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="weights.safetensors is not a medcore checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="missing.safetensors does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


class _Exploit:
    """Unpickling this would create a file: proof that a loader ran pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_checkpoint_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    for name, payload in [("pickle.safetensors", pickle.dumps({"model": _Exploit(marker)})),
                          ("torch.safetensors", None)]:
        path = tmp_path / name
        if payload is None:
            torch.save({"model": _Exploit(marker), "w": torch.zeros(2)}, path)
        else:
            path.write_bytes(payload)
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            load_checkpoint(path)
        assert not marker.exists(), "loading executed code from a pickle"


def test_trainer_refuses_corrupt_last_checkpoint(tmp_path):
    from engine_tiny_train import TinyNet, augment, make_item

    from medcore.engine.data import EpochDataset
    from medcore.engine.trainer import Trainer, TrainerConfig

    def trainer():
        data = EpochDataset([make_item(i) for i in range(4)], augment, seed=1)
        return Trainer(TinyNet(), nn.CrossEntropyLoss(), data, tmp_path,
                       TrainerConfig(max_epochs=1, batch_size=2, progress=False))

    trainer().fit()
    last = tmp_path / "checkpoints" / "last.safetensors"
    last.write_bytes(last.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"last\.safetensors"):
        trainer().fit()
