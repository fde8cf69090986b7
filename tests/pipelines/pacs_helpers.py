"""Shared pieces of the PACS tests: a private Orthanc per test module, synthetic studies, SEG checks."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from pipelines.orthanc import Orthanc, orthanc_available

PROJECT = Path(__file__).resolve().parents[2]


def require_orthanc() -> None:
    """Skip without Orthanc locally; in CI (``CI=true``) a missing Orthanc is a failure."""
    if not orthanc_available():
        if os.environ.get("CI") == "true":
            pytest.fail("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
        pytest.skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")


def start_orthanc() -> Orthanc:
    require_orthanc()
    return Orthanc().start()


def upload(pacs, folder: Path) -> int:
    """Store every DICOM file under ``folder`` (STOW-RS); returns how many."""
    files = sorted(p for p in folder.rglob("*.dcm") if p.is_file())
    pacs.store([pydicom.dcmread(p) for p in files])
    return len(files)


def drop_middle_slice(series_folder: Path) -> Path:
    """Remove the file of the middle slice (by position along the normal): a gap in the stack."""
    files = sorted(series_folder.glob("*.dcm"))
    z = {p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in files}
    ordered = sorted(files, key=z.get)
    victim = ordered[len(ordered) // 2]
    victim.unlink()
    return victim


def dciodvfy_errors(path: Path) -> list[str]:
    """``Error`` lines of dicom3tools' dciodvfy (required in CI)."""
    if shutil.which("dciodvfy") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dciodvfy is not installed (apt-get install dicom3tools)")
        pytest.skip("dciodvfy is not installed (apt-get install dicom3tools)")
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
