"""Stage ``register``: one MLflow run per training, a model version with lineage, champion/challenger.

The alias ``champion`` moves only when the candidate beats the current champion on the same
evaluation set (the champion is re-evaluated on it when its recorded set differs); otherwise the
candidate gets ``challenger`` and the reason is stored as a version tag. Reruns reuse the run and
the version of the same training (tag ``training_key``), so a crash never duplicates registry entries.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.inference import registered_model_dir
from pipelines.params import PROJECT_ROOT, resolve, tracking_uri
from pipelines.steps.evaluate import PER_CASE, case_scores, evaluation_cases, foreground_labels, measure_model
from pipelines.steps.layout import Layout, read_json
from pipelines.steps.results import (
    Bootstrap,
    DatasetVersion,
    Evaluation,
    Registration,
    TrainedModel,
    load,
    save,
    to_json,
)

MODEL_CODE = Path(__file__).resolve().parents[1] / "mlflow_model.py"


def code_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def client_for(params: dict):
    """An MlflowClient on the SQLite backend, and the experiment id (artifact_location set explicitly)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    name = params["register"]["experiment"]
    exp = client.get_experiment_by_name(name)
    if exp is None:
        root = resolve(params, params["register"]["artifact_root"])
        root.mkdir(parents=True, exist_ok=True)
        exp_id = client.create_experiment(name, artifact_location=root.as_uri())
    else:
        exp_id = exp.experiment_id
    return client, exp_id


def paired_bootstrap(candidate: Mapping[str, float], champion: Mapping[str, float], samples: int = 2000,
                     seed: int = 0, champion_rescored: bool = False) -> Bootstrap:
    """Resample the shared test cases with replacement ``samples`` times; the 2.5th and 97.5th percentiles of
    the mean (candidate - champion) Dice bound the improvement with 95% confidence (pure, seeded)."""
    shared = sorted(set(candidate) & set(champion))
    diffs = np.asarray([candidate[c] - champion[c] for c in shared], dtype=float)
    if not len(diffs):
        return Bootstrap(0, float("nan"), float("nan"), float("nan"), samples, champion_rescored)
    draws = np.random.default_rng(seed).integers(0, len(diffs), size=(samples, len(diffs)))
    lower, upper = np.percentile(diffs[draws].mean(axis=1), [2.5, 97.5])
    return Bootstrap(len(diffs), float(diffs.mean()), float(lower), float(upper), samples, champion_rescored)


def decide_promotion(stat: Bootstrap | None, min_improvement: float = 0.0, min_cases: int = 10) -> tuple[bool, str]:
    """Whether the candidate becomes champion, and why (pure: the rule the registry applies)."""
    if stat is None:
        return True, "no champion yet"
    shown = (f"mean Dice difference {stat.mean_difference:+.4f}, 95% interval [{stat.lower:+.4f}, {stat.upper:+.4f}] "
             f"over {stat.cases} paired test cases" + (", champion re-scored on this test set"
                                                       if stat.champion_rescored else ""))
    if stat.cases < min_cases:
        return False, (f"too few test cases for a decision: {stat.cases} paired test cases, at least {min_cases} "
                       f"needed (register.min_test_cases); stays challenger ({shown})")
    if stat.lower > min_improvement:
        return True, f"better than the champion with 95% confidence: {shown}; lower bound > {min_improvement}"
    return False, (f"not better than the champion with 95% confidence: {shown}; lower bound {stat.lower:+.4f} "
                   f"<= {min_improvement}")


def champion_rule(candidate: Mapping[str, float], champion: Mapping[str, float] | None, settings: dict,
                  champion_rescored: bool = False) -> tuple[Bootstrap | None, bool, str]:
    """The champion rule on per-case mean Dice (pure): ``(statistic, promote, reason)``. ``champion`` holds the
    champion's scores on the same test cases (None: there is no champion); ``settings`` is the params'
    ``register`` section (``bootstrap_samples``, ``min_improvement``, ``min_test_cases``)."""
    stat = None if champion is None else paired_bootstrap(candidate, champion, int(settings["bootstrap_samples"]),
                                                          champion_rescored=champion_rescored)
    promote, reason = decide_promotion(stat, float(settings["min_improvement"]), int(settings["min_test_cases"]))
    return stat, promote, reason


def log_model_dir(model_dir: Path):
    """Log a MODEL_DIR as the project's pyfunc (model from code, no pickle) in the active MLflow run."""
    import mlflow
    import pandas as pd

    from pipelines import serving

    return mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_CODE), artifacts={"model_dir": str(model_dir)},
                                   pip_requirements=["medcore", "mlflow", "torch", "pandas"],
                                   signature=serving.signature(),
                                   input_example=(pd.DataFrame({serving.IMAGE_COLUMN: [serving.example_request()]}),
                                                  {"output_format": "nifti"}))


def _flat(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list) else value
    return out


def _find_run(client, exp_id: str, key: str):
    runs = client.search_runs([exp_id], filter_string=f"tags.training_key = '{key}'", max_results=5)
    return runs[0] if runs else None


def find_version(client, name: str, key: str):
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    found = [v for v in versions if v.tags.get("training_key") == key]
    return sorted(found, key=lambda v: int(v.version))[0] if found else None


def champion_version(client, name: str):
    """The model version the ``champion`` alias points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None


def champion_cases(client, params: dict, name: str, evaluation: Evaluation) -> tuple[Any, dict[str, float], bool]:
    """The champion version (None if there is none), its per-case Dice on ``evaluation``'s test set, and
    whether it had to be scored anew (its recorded evaluation was on another test set)."""
    import mlflow
    import pandas as pd

    champ = champion_version(client, name)
    if champ is None:
        return None, {}, False
    if champ.tags.get("evaluation_set") == evaluation.evaluation_set:
        table = mlflow.artifacts.download_artifacts(run_id=champ.run_id, artifact_path=f"evaluation/{PER_CASE}")
        return champ, case_scores(pd.read_csv(table).to_dict("records")), False
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{champ.version}"))
    rows, _ = measure_model(registered_model_dir(local), evaluation_cases(params), foreground_labels(params))
    return champ, case_scores(rows), True


def register(params: dict, run_tags: dict | None = None, evaluation: Evaluation | None = None) -> Registration:
    """Log the training as an MLflow run, register its model, and apply the champion rule."""
    import mlflow
    import pandas as pd

    layout = Layout.from_params(params)
    latest = load(layout.latest_json, TrainedModel)
    evaluation = evaluation or load(layout.summary_json, Evaluation)
    dataset = load(layout.dataset_version, DatasetVersion)
    key = latest.run_key
    name = params["register"]["model_name"]
    client, exp_id = client_for(params)
    plan = layout.out / latest.run_dir / "plan.json"
    modality = read_json(plan).get("modality") if plan.is_file() else None
    lineage = {"training_key": key, "dataset_hash": dataset.dataset_hash, "code_commit": code_commit(),
               **({"modality": str(modality)} if modality else {}),
               "evaluation_set": evaluation.evaluation_set, "mean_dice": f"{evaluation.mean_dice:.6f}",
               **{k: str(v) for k, v in (run_tags or {}).items()}}
    version = find_version(client, name, key)
    if version is None:
        run = _find_run(client, exp_id, key)
        run_id = (
            run.info.run_id if run else client.create_run(exp_id, run_name=f"train-{key}", tags=lineage).info.run_id
        )
        with mlflow.start_run(run_id=run_id):
            mlflow.log_params({k: v for k, v in _flat("", params["train"], {}).items()})
            for record in read_json(layout.out / latest.run_dir / "history.json"):
                step = int(record["epoch"])
                mlflow.log_metrics({k: float(v) for k, v in record.items() if k != "epoch"
                                    and isinstance(v, (int, float)) and v == v and abs(v) != float("inf")}, step=step)
            mlflow.log_metrics({"eval_mean_dice": evaluation.mean_dice,
                                **{f"eval_dice_{k}": v for k, v in evaluation.class_dice.items()}})
            for plot in evaluation.plots.values():
                mlflow.log_artifact(str(layout.evaluation_dir / plot), "evaluation")
            mlflow.log_artifact(str(layout.evaluation_dir / PER_CASE), "evaluation")
            if plan.is_file():  # the plan medcore derived from the data, with the reason for each choice
                mlflow.log_artifact(str(plan), "plan")
            info = log_model_dir(layout.out / latest.model_dir)
        version = mlflow.register_model(info.model_uri, name, tags=lineage)
        version = client.get_model_version(name, version.version)
    champ, champ_cases, rescored = champion_cases(client, params, name, evaluation)
    stat = None
    if champ is not None and champ.version == version.version:
        promote, reason = True, "already champion"
    else:
        ours = case_scores(pd.read_csv(layout.evaluation_dir / PER_CASE).to_dict("records"))
        stat, promote, reason = champion_rule(ours, None if champ is None else champ_cases, params["register"],
                                              rescored)
        if stat is not None:
            log_comparison(client, version, ours, champ_cases, stat)
    alias = "champion" if promote else "challenger"
    move_alias(client, name, version.version, alias)
    client.set_model_version_tag(name, version.version, "promotion", reason)
    artifact_root = str(resolve(params, params["register"]["artifact_root"]))
    result = Registration(name, str(version.version), alias, reason, f"models:/{name}@{alias}", tracking_uri(params),
                          version.run_id, str(version.source), artifact_root, lineage, stat)
    save(layout.registered_json, result)
    return result


def log_comparison(client, version, ours: dict[str, float], champion: dict[str, float], stat: Bootstrap) -> None:
    """Record the decision's evidence on the version: the statistic as tags, the per-case table as an artifact."""
    import tempfile

    import pandas as pd

    for key, value in to_json(stat).items():
        client.set_model_version_tag(version.name, version.version, f"bootstrap_{key}", str(value))
    shared = sorted(set(ours) & set(champion))
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "paired_cases.csv"
        pd.DataFrame({"case": shared, "candidate_dice": [ours[c] for c in shared],
                      "champion_dice": [champion[c] for c in shared]}).to_csv(table, index=False)
        client.log_artifact(version.run_id, str(table), "promotion")


def move_alias(client, name: str, version: str, alias: str) -> None:
    """Point ``alias`` at ``version``; a new champion also stops being the challenger."""
    from mlflow.exceptions import MlflowException

    client.set_registered_model_alias(name, alias, version)
    if alias == "champion":
        try:
            if client.get_model_version_by_alias(name, "challenger").version == version:
                client.delete_registered_model_alias(name, "challenger")
        except MlflowException:  # no challenger alias: nothing to clear
            pass
