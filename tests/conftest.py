"""Shared fixtures: where the real test data lives, and CPU-friendly torch settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """``$MEDCORE_TEST_DATA`` or ``../shared/data`` beside the project root."""
    return Path(os.environ.get("MEDCORE_TEST_DATA", ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder. Missing data skips locally but fails under CI (CI=true)."""
    root = data_root()
    if not root.is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"test data folder {root} is missing; set MEDCORE_TEST_DATA")
        pytest.skip(f"test data folder {root} is missing; set MEDCORE_TEST_DATA")
    return root


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    except ImportError:
        pass
    yield
