"""Stage ``dataset``: the fan-in of every converted, labelled study into one MSD-layout dataset version.

Under Dagster the folder is also tracked with ``dvc add`` and pushed to the local remote; under
``dvc repro`` it is a stage output, tracked by DVC itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from medcore.utils.atomic import atomic_dir, sweep_tmp
from pipelines.params import PROJECT_ROOT, resolve
from pipelines.steps.convert import study_labels
from pipelines.steps.layout import Layout, tree_hash, write_json
from pipelines.steps.results import DatasetVersion, DvcTracking, save

DATASET_JSON = "dataset.json"


def available_studies(params: dict) -> list[str]:
    """Studies whose conversion and label matching both completed."""
    layout = Layout.from_params(params)
    root = layout.out / "converted"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (layout.labels_dir(p.name) / "labels.json").is_file())


def assemble_dataset(params: dict, studies: list[str] | None = None) -> DatasetVersion:
    """Write ``dataset/`` (imagesTr, labelsTr, dataset.json) from ``studies`` (default: all available)."""
    layout = Layout.from_params(params)
    studies = available_studies(params) if studies is None else sorted(studies)
    label_names: dict[str, str] = {}
    training = []
    sweep_tmp(layout.dataset_dir.parent)
    with atomic_dir(layout.dataset_dir) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for key in studies:
            info = study_labels(params, key)
            label_names.update(info["label_names"])
            for pair in info["pairs"]:
                name = f"{pair['series_id']}.nii.gz"
                shutil.copyfile(layout.out / pair["image"], tmp / "imagesTr" / name)
                shutil.copyfile(layout.out / pair["label"], tmp / "labelsTr" / name)
                training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        if not training:
            raise ValueError(f"no labelled series in {len(studies)} studies under {layout.out}; check the label "
                             f"manifest {params['source']['label_manifest']} matches the DICOM in the inbox")
        write_json(tmp / DATASET_JSON, {"name": "medcore-pipeline", "modality": {"0": "CT"}, "labels": label_names,
                                        "numTraining": len(training), "training": training})
    version = tree_hash(layout.dataset_dir)
    result = DatasetVersion(version, len(training), tuple(studies), label_names)
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
