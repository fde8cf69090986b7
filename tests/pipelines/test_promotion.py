"""Issue 12 promotion: `champion` moves only when the candidate is better with 95% confidence on the frozen
test set (paired bootstrap), against a real MLflow registry; the test split itself is frozen per patient."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.steps.dataset import assign_patients
from pipelines.steps.register import decide_promotion, paired_bootstrap


def test_paired_bootstrap_and_the_rule():
    rng = np.random.default_rng(0)
    base = {f"c{i}": float(v) for i, v in enumerate(rng.uniform(0.5, 0.8, 20))}
    better = {k: v + 0.1 + rng.normal(0, 0.02) for k, v in base.items()}
    noisy = {k: v + rng.normal(0, 0.05) for k, v in base.items()}
    clear = paired_bootstrap(better, base)
    assert clear.cases == 20 and 0.05 < clear.lower < clear.mean_difference < clear.upper
    assert paired_bootstrap(better, base) == clear  # seeded: the same evidence gives the same decision
    promote, reason = decide_promotion(clear, 0.0, 10)
    assert promote and "95% confidence" in reason and f"{clear.lower:+.4f}" in reason
    same = paired_bootstrap(noisy, base)
    assert same.lower < 0 < same.upper
    promote, reason = decide_promotion(same, 0.0, 10)
    assert not promote and "not better" in reason
    assert not decide_promotion(clear, min_improvement=clear.upper, min_cases=10)[0]
    few = paired_bootstrap({k: better[k] for k in list(better)[:4]}, base)
    promote, reason = decide_promotion(few, 0.0, 10)
    assert not promote and reason.startswith("too few test cases for a decision: 4 paired test cases")
    assert decide_promotion(None) == (True, "no champion yet")
    assert paired_bootstrap({"a": 1.0}, {"b": 1.0}).cases == 0


def test_test_split_is_frozen_per_patient():
    units = {f"p{i}": u for i, u in enumerate([0.05, 0.5, 0.9, 0.15, 0.7])}
    first = assign_patients(units, {}, 0.2)
    assert {p for p, s in first.items() if s == "test"} == {"p0", "p3"}
    grown = assign_patients({**units, "p5": 0.01, "p6": 0.6}, first, 0.2)
    assert {p: grown[p] for p in first} == first  # nobody moves when new patients arrive
    assert grown["p5"] == "test" and grown["p6"] == "train"
    assert assign_patients({"a": 0.9, "b": 0.8}, {}, 0.2) == {"a": "train", "b": "test"}  # a test set anyway
    assert assign_patients({"a": 0.9}, {}, 0.2) == {"a": "train"}  # one patient: nothing to test on


def _candidate(run: dict, tmp: Path, name: str, dice: dict[str, float] | None, evaluation_set: str | None = None):
    """A copy of the shared run's outputs as another training (new key) with per-case Dice ``dice`` (None: the
    real evaluation's table) on the shared run's test set (or ``evaluation_set``)."""
    src = Path(run["params"]["root"]) / "outputs" / "pipeline"
    out = tmp / name
    latest = json.loads((src / "train" / "latest.json").read_text())
    shutil.copytree(src / latest["run_dir"] / "model", out / "train" / name / "model")
    for f in ("history.json", "curves.png"):
        shutil.copyfile(src / latest["run_dir"] / f, out / "train" / name / f)
    shutil.copyfile(src / "dataset_version.json", out / "dataset_version.json")
    (out / "train" / "latest.json").write_text(json.dumps({**latest, "run_key": name, "run_dir": f"train/{name}",
                                                           "model_dir": f"train/{name}/model"}))
    shutil.copytree(src / "evaluation", out / "evaluation")
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    if dice is not None:
        pd.DataFrame([{"case": k, "class": "organ", "dice": v} for k, v in dice.items()]).to_csv(
            out / "evaluation" / "per_case.csv", index=False)
        summary["mean_dice"] = float(np.mean(list(dice.values())))
    summary["evaluation_set"] = evaluation_set or summary["evaluation_set"]
    (out / "evaluation" / "summary.json").write_text(json.dumps(summary))
    params = copy.deepcopy(run["params"])
    params["output_dir"] = str(out)
    params["dataset_dir"] = str(Path(run["params"]["root"]) / "data" / "dataset")
    params["register"] = {**params["register"], "model_name": "promotion-test", "min_test_cases": 8}
    return params


def test_promotion_needs_confidence_on_the_same_test_set(pipeline_run, tmp_path):
    import mlflow

    from pipelines.steps.register import register

    rng = np.random.default_rng(1)
    base = {f"case-{i:02d}": float(v) for i, v in enumerate(rng.uniform(0.4, 0.7, 12))}
    first = register(_candidate(pipeline_run, tmp_path, "cand-a", base))
    assert first.alias == "champion" and first.reason == "no champion yet" and first.statistic is None
    no_better = register(_candidate(pipeline_run, tmp_path, "cand-b",
                                    {k: v + rng.normal(0, 0.03) for k, v in base.items()}))
    assert no_better.alias == "challenger" and no_better.reason.startswith("not better than the champion")
    stat = no_better.statistic
    assert stat.cases == 12 and stat.lower < 0 and not stat.champion_rescored
    client = mlflow.MlflowClient(first.tracking_uri, first.tracking_uri)
    tags = client.get_model_version("promotion-test", no_better.version).tags
    assert tags["promotion"] == no_better.reason and float(tags["bootstrap_lower"]) == no_better.statistic.lower
    table = mlflow.artifacts.download_artifacts(run_id=no_better.run_id, artifact_path="promotion/paired_cases.csv")
    assert len(pd.read_csv(table)) == 12
    assert str(client.get_model_version_by_alias("promotion-test", "champion").version) == first.version
    better = register(_candidate(pipeline_run, tmp_path, "cand-c", {k: v + 0.2 for k, v in base.items()}))
    assert better.alias == "champion" and better.statistic.lower > 0.15
    assert str(client.get_model_version_by_alias("promotion-test", "champion").version) == better.version
    few = register(_candidate(pipeline_run, tmp_path, "cand-d", {k: 0.99 for k in list(base)[:3]}))
    assert few.alias == "challenger" and few.reason.startswith("too few test cases for a decision")
    # the test set grew: the champion is scored anew on it (real inference), never compared across sets
    grown = register(_candidate(pipeline_run, tmp_path, "cand-e", None, evaluation_set="a-grown-test-set"))
    assert grown.statistic.champion_rescored and "champion re-scored on this test set" in grown.reason
    # registering the same training again neither duplicates the version nor moves the alias
    again = register(_candidate(pipeline_run, tmp_path / "rerun", "cand-c", {k: v + 0.2 for k, v in base.items()}))
    assert again.version == better.version and again.reason == "already champion"
    assert len(client.search_model_versions("name = 'promotion-test'")) == 5
