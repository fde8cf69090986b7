"""Tiny federated sites: each a pipeline project folder with its own synthetic inbox and de-identification key."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

SHAPE = (32, 32, 12)


def make_site(root: Path, name: str, seed: int, n_patients: int = 2, class_names: dict | None = None) -> Path:
    """``root/name``: params.yaml, ``inbox/`` with synthetic DICOM studies and labels, key in ``root/keys``."""
    from medcore.data.synthetic import write_synthetic_studies

    site = root / name
    site.mkdir(parents=True)
    write_synthetic_studies(site / "inbox", n_patients=n_patients, seed=seed, shape=SHAPE, localizer=False)
    if class_names is not None:  # a site that names its classes differently
        manifest = site / "inbox" / "labels" / "labels.json"
        data = json.loads(manifest.read_text())
        data["label_names"] = class_names
        manifest.write_text(json.dumps(data))
    keys = root / "keys"
    keys.mkdir(exist_ok=True)
    params = {"source": {"dicom_dir": "inbox/dicom", "label_manifest": "inbox/labels/labels.json",
                         "settle_seconds": 0},
              "output_dir": "outputs", "deid_key_file": str(keys / f"{name}.key"),
              "train": {"val_fraction": 0.34}}
    (site / "params.yaml").write_text(yaml.safe_dump(params))
    return site


def coordinator_params(root: Path) -> Path:
    """params.yaml of the coordinating project: only the MLflow registry matters here."""
    root.mkdir(parents=True, exist_ok=True)
    params = {"output_dir": "outputs",
              "register": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "artifact_root": "mlartifacts",
                           "model_name": "medcore-federated", "experiment": "medcore-federated"}}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path
