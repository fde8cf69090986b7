"""Stage ``dataset``: the fan-in of every converted, labelled study into one MSD-layout dataset version.

Under Dagster the folder is also tracked with ``dvc add`` and pushed to the local remote; under
``dvc repro`` it is a stage output, tracked by DVC itself.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from medcore.utils.atomic import atomic_dir, sweep_tmp
from pipelines.params import PROJECT_ROOT, resolve
from pipelines.steps.convert import study_labels
from pipelines.steps.ingest import deidentifier
from pipelines.steps.layout import Layout, read_json, tree_hash, write_json
from pipelines.steps.results import DatasetVersion, DvcTracking, save

DATASET_JSON = "dataset.json"
SPLIT_JSON = "split.json"


def available_studies(params: dict) -> list[str]:
    """Studies whose conversion and label matching both completed."""
    layout = Layout.from_params(params)
    root = layout.out / "converted"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (layout.labels_dir(p.name) / "labels.json").is_file())


def split_unit(deid, subject: str) -> float:
    """A number in [0, 1) from a keyed hash of a patient's pseudonym: the same patient, the same number."""
    digest = hashlib.sha256(deid.uid("medcore-test-split:" + subject).encode()).hexdigest()
    return int(digest[:13], 16) / 16 ** 13


def assign_patients(units: Mapping[str, float], previous: Mapping[str, str], fraction: float) -> dict[str, str]:
    """``{patient: "train" | "test"}``: a patient keeps the side it was given before; a new patient goes
    to test when its unit (:func:`split_unit`) is below ``fraction``. While no patient is on the test
    side, the new patient with the smallest unit is, so a small dataset still has a test set."""
    sides = {p: previous[p] for p in units if p in previous}
    new = sorted((p for p in units if p not in sides), key=lambda p: units[p])
    sides |= {p: "test" if units[p] < fraction else "train" for p in new}
    if new and len(units) > 1 and "test" not in sides.values():
        sides[new[0]] = "test"
    return dict(sorted(sides.items()))


def _pairs(params: dict, studies: list[str]) -> tuple[list[dict], dict[str, str]]:
    """Every labelled series of ``studies`` and the merged label names."""
    names: dict[str, str] = {}
    pairs = []
    for key in studies:
        info = study_labels(params, key)
        names.update(info["label_names"])
        pairs += info["pairs"]
    return pairs, names


def assemble_dataset(params: dict, studies: list[str] | None = None) -> DatasetVersion:
    """Write ``dataset/`` (imagesTr, labelsTr, dataset.json with its ``training`` and ``test`` patients,
    split.json) from ``studies`` (default: all available)."""
    layout = Layout.from_params(params)
    studies = available_studies(params) if studies is None else sorted(studies)
    pairs, label_names = _pairs(params, studies)
    if not pairs:
        raise ValueError(f"no labelled series in {len(studies)} studies under {layout.out}; give labels as DICOM "
                         f"SEG in the study folders or through the label manifest {params['source']['label_manifest']}")
    modalities = sorted({p["modality"] for p in pairs})
    if len(modalities) != 1:
        raise ValueError(f"the labelled series mix modalities {modalities}; one model is trained per modality: "
                         "deliver the studies of one modality to this inbox")
    old_split = layout.dataset_dir / SPLIT_JSON
    previous = read_json(old_split)["patients"] if old_split.is_file() else {}
    deid = deidentifier(params)
    fraction = float(params["dataset"]["test_fraction"])
    sides = assign_patients({p["subject"]: split_unit(deid, p["subject"]) for p in pairs}, previous, fraction)
    sweep_tmp(layout.dataset_dir.parent)
    with atomic_dir(layout.dataset_dir) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        lists: dict[str, list[dict]] = {"train": [], "test": []}
        for pair in pairs:
            name = f"{pair['series_id']}.nii.gz"
            shutil.copyfile(layout.out / pair["image"], tmp / "imagesTr" / name)
            shutil.copyfile(layout.out / pair["label"], tmp / "labelsTr" / name)
            lists[sides[pair["subject"]]].append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        write_json(tmp / DATASET_JSON, {"name": "medcore-pipeline", "modality": {"0": modalities[0]},
                                        "labels": label_names, "numTraining": len(lists["train"]),
                                        "training": lists["train"], "numTest": len(lists["test"]),
                                        "test": lists["test"]})
        write_json(tmp / SPLIT_JSON, {"method": "keyed hash of the patient pseudonym; a patient never moves",
                                      "test_fraction": fraction, "patients": sides})
    result = DatasetVersion(tree_hash(layout.dataset_dir), len(pairs), tuple(studies), label_names, modalities[0],
                            sum(s == "train" for s in sides.values()), sum(s == "test" for s in sides.values()),
                            len(lists["test"]))
    save(layout.dataset_version, result)
    return result


def dvc_executable() -> str:
    """``$MEDCORE_DVC``, else ``.venv-dvc/bin/dvc`` under the project, else ``dvc`` on PATH."""
    env = os.environ.get("MEDCORE_DVC")
    if env:
        return env
    local = PROJECT_ROOT / ".venv-dvc" / "bin" / "dvc"
    if local.exists():
        return str(local)
    found = shutil.which("dvc")
    if not found:
        raise FileNotFoundError("DVC not found: set $MEDCORE_DVC or run `make dvc-tool` (creates .venv-dvc)")
    return found


def _dvc(args: list[str], cwd: Path) -> str:
    proc = subprocess.run([dvc_executable(), *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`dvc {' '.join(args)}` failed in {cwd} (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc.stdout


def ensure_dvc_repo(params: dict) -> Path:
    """The params' root as a DVC repository with the local remote as default (written to config.local)."""
    root = Path(params["root"])
    if not (root / ".dvc").is_dir():
        _dvc(["init", "--quiet"] + ([] if (root / ".git").exists() else ["--no-scm"]), root)
    remote = resolve(params, params["dvc"]["remote"])
    remote.mkdir(parents=True, exist_ok=True)
    _dvc(["remote", "add", "--local", "--force", "--default", "medcore-local", str(remote)], root)
    return root


def track_dataset(params: dict) -> DvcTracking:
    """``dvc add`` the dataset folder and ``dvc push`` it; return the DVC directory hash."""
    import yaml

    root = ensure_dvc_repo(params)
    dataset = Layout.from_params(params).dataset_dir
    _dvc(["add", "--quiet", str(dataset)], root)
    dvc_file = dataset.with_name(dataset.name + ".dvc")
    _dvc(["push", "--quiet", str(dvc_file)], root)
    outs = yaml.safe_load(dvc_file.read_text())["outs"][0]
    return DvcTracking(str(dvc_file.relative_to(root)), str(outs.get("md5")), int(outs.get("nfiles") or 0))
