"""Acceptance 3: a worse candidate does not take `champion`; a better one does (real MLflow registry)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

from pipelines.steps.register import decide_promotion


def test_decide_promotion_rule():
    assert decide_promotion(0.5, None) == (True, "no champion yet")
    promote, reason = decide_promotion(0.4, 0.5)
    assert not promote and "does not beat" in reason
    assert decide_promotion(0.6, 0.5)[0]
    assert not decide_promotion(0.5, 0.5)[0]  # a tie keeps the champion
    assert not decide_promotion(0.52, 0.5, min_improvement=0.05)[0]


def _candidate(run: dict, tmp: Path, name: str, dice: float) -> dict:
    """A copy of the shared run's outputs as another training (new key) scoring ``dice`` on the same set."""
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
    (out / "evaluation" / "summary.json").write_text(json.dumps({**summary, "mean_dice": dice}))
    params = copy.deepcopy(run["params"])
    params["output_dir"] = str(out)
    params["register"]["model_name"] = "promotion-test"
    return params


def test_worse_candidate_does_not_take_champion(pipeline_run, tmp_path):
    import mlflow

    from pipelines.steps.register import register

    first = register(_candidate(pipeline_run, tmp_path, "cand-a", 0.50))
    assert first.alias == "champion"
    worse = register(_candidate(pipeline_run, tmp_path, "cand-b", 0.30))
    assert worse.alias == "challenger" and "does not beat" in worse.reason
    client = mlflow.MlflowClient(first.tracking_uri)
    assert str(client.get_model_version_by_alias("promotion-test", "champion").version) == first.version
    assert str(client.get_model_version_by_alias("promotion-test", "challenger").version) == worse.version
    assert "does not beat" in client.get_model_version("promotion-test", worse.version).tags["promotion"]
    better = register(_candidate(pipeline_run, tmp_path, "cand-c", 0.70))
    assert better.alias == "champion"
    assert str(client.get_model_version_by_alias("promotion-test", "champion").version) == better.version
    # registering the same training again neither duplicates the version nor moves the alias
    again = register(_candidate(pipeline_run, tmp_path / "rerun", "cand-c", 0.70))
    assert again.version == better.version
    versions = client.search_model_versions("name = 'promotion-test'")
    assert len(versions) == 3
