"""A real federation: a SuperLink and four SuperNodes (processes) on 127.0.0.1, tiny synthetic DICOM sites.

One run (module scope) is read by every test: three sites train two rounds, a fourth site with other
class names is refused, one SuperNode is killed during round 2. The run then registers its model.
The last test kills the server during a third round, then runs the Dagster job: it resumes.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from pathlib import Path

import nibabel as nib
import pytest
import yaml

from pipelines.federated.federate import FederationSettings, federate
from pipelines.federated.records import AUDIT_ENV, violations
from pipelines.params import load_params
from pipelines.steps.layout import read_json

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


PLAN = {"patch_size": [16, 16, 8], "base_filters": 4, "batch_size": 2}
OTHER_CLASSES = {"0": "background", "1": "liver", "2": "tumour"}


def kill_in_round(out: Path, who: str, rnd: int, timeout: float = 400.0) -> threading.Thread:
    """In the background: once the server logs round ``rnd``, SIGKILL ``who`` (a site's SuperNode and its
    ClientApp, or ``superlink``: the server) by its process group."""

    def watch() -> None:
        end = time.time() + timeout
        log, processes = out / "federation.log", out / "processes.json"
        while time.time() < end:
            if log.is_file() and f"round {rnd}: training" in log.read_text() and processes.is_file():
                pids = read_json(processes)
                pid = pids["superlink"] if who == "superlink" else pids["supernodes"][who]
                time.sleep(2.0)  # the site is busy with the round
                os.killpg(pid, signal.SIGKILL)
                return
            time.sleep(0.5)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("federation")
    sites = [make_site(root, "site-a", seed=1, n_patients=3), make_site(root, "site-b", seed=2),
             make_site(root, "site-c", seed=3), make_site(root, "site-x", seed=4, class_names=OTHER_CLASSES)]
    params = load_params(coordinator_params(root / "coordinator"))
    out = root / "server"
    settings = FederationSettings(rounds=2, local_steps=2, round_timeout=120.0, prepare_timeout=300.0,
                                  plan_overrides=PLAN)
    killer = kill_in_round(out, "site-c", 2)
    done = federate(sites, params, settings, out, env={AUDIT_ENV: str(root / "audit")})
    killer.join(timeout=1)
    return {"root": root, "sites": sites, "params": params, "done": done, "out": out, "audit": root / "audit"}


def test_federation_completes_and_registers_a_model_that_loads_by_alias(federation):
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    done, params = federation["done"], federation["params"]
    assert done.result["rounds"] == 2 and done.result["sites"] == ["site-a", "site-b", "site-c"]
    reg = done.registered
    assert reg["alias"] == "champion" and reg["sites"] == "site-a,site-b,site-c"
    uri = params["register"]["tracking_uri"]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    version = client.get_model_version_by_alias("medcore-federated", "champion")
    tags = version.tags
    assert tags["rounds"] == "2" and tags["aggregation"] == "fedavg" and tags["refused_sites"] == "site-x"
    hashes = json.loads(tags["site_dataset_hashes"])
    assert sorted(hashes) == ["site-a", "site-b", "site-c"] and all(len(h) == 64 for h in hashes.values())
    assert not any(str(federation["root"]) in v for v in tags.values())  # site names, never paths
    table = client.download_artifacts(version.run_id, "evaluation/per_site.csv")
    assert set(pd.read_csv(table)["site"]) <= {"site-a", "site-b", "site-c"}
    model = mlflow.pyfunc.load_model("models:/medcore-federated@champion")
    image = next((federation["sites"][0] / "outputs" / "dataset" / "imagesTr").glob("*.nii.gz"))
    out = model.predict(pd.DataFrame({"image": [base64.b64encode(image.read_bytes()).decode("ascii")]}))
    pred = federation["root"] / "pred.nii.gz"
    pred.write_bytes(base64.b64decode(out["labels"][0]))  # the model takes and returns content, never a path
    assert nib.load(pred).shape[:3] == nib.load(image).shape[:3]


def test_site_with_other_class_names_is_refused_by_name_with_its_reason(federation):
    refused = federation["done"].result["refused"]
    assert list(refused) == ["site-x"] and "class names" in refused["site-x"] and "tumour" in refused["site-x"]
    assert "site site-x refused: class names" in (federation["out"] / "federation.log").read_text()


def test_supernode_killed_mid_round_is_reported_and_the_run_finishes(federation):
    log = (federation["out"] / "federation.log").read_text()
    assert "round 2: site site-c missing" in log
    rounds = read_json(federation["out"] / "rounds.json")
    assert rounds[0]["sites"] == ["site-a", "site-b", "site-c"]
    assert rounds[1]["sites"] == ["site-a", "site-b"] and "site-c" in rounds[1]["missing"]
    assert (federation["out"] / "result.json").is_file()


def test_every_message_carries_only_weights_and_metrics_and_no_pseudonym(federation):
    files = sorted(federation["audit"].glob("*.jsonl"))
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    sent = [m for m in lines if m["direction"] == "sent"]
    assert {m["type"] for m in sent} == {"query", "train", "evaluate"}
    assert [v for m in sent for v in violations(m)] == []
    for m in sent:
        if m["type"] == "train":
            assert {r["kind"] for r in m["records"].values()} == {"ArrayRecord", "MetricRecord"}
        if m["type"] == "evaluate":
            assert {r["kind"] for r in m["records"].values()} == {"MetricRecord"}
    # pseudonyms (study keys and series ids) of every site: in no message and nowhere in the server folder
    pseudonyms = set()
    for site in federation["sites"]:
        pseudonyms |= {p.name for p in (site / "outputs" / "converted").iterdir() if not p.name.startswith(".")}
        pseudonyms |= {p.name.split(".nii")[0] for p in (site / "outputs" / "dataset" / "imagesTr").iterdir()}
    assert len(pseudonyms) > 8
    texts = [json.dumps(lines)] + [p.read_text(errors="ignore") for p in federation["out"].rglob("*")
                                   if p.is_file() and p.suffix in (".json", ".log", ".csv", ".toml")]
    assert not [p for p in pseudonyms for t in texts if p in t]


def test_killed_server_resumes_from_its_last_round_checkpoint_through_dagster_with_secagg(federation, monkeypatch):
    """A third round on the same server folder: its server is killed mid-round, so the run fails; the
    ``federate`` Dagster job then resumes after round 2 and runs round 3 with SecAgg+, where what the sites
    send is masked (audited as above)."""
    from dagster import DagsterInstance

    from medcore.engine.checkpoint import load_checkpoint
    from pipelines.definitions import make_definitions
    from pipelines.federated.federate import run_federation
    from pipelines.resources import PipelineSettings

    root, out = federation["root"], federation["out"]
    killer = kill_in_round(out, "superlink", 3)
    with pytest.raises(RuntimeError, match="without result.json"):
        run_federation(federation["sites"], out, FederationSettings(rounds=3, local_steps=2, round_timeout=120.0,
                                                                    plan_overrides=PLAN))
    killer.join(timeout=1)
    assert "round 3: training" in (out / "federation.log").read_text()
    assert load_checkpoint(out / "checkpoints" / "last.safetensors")["round"] == 2
    settings = PipelineSettings(params_file=str(root / "coordinator" / "params.yaml"))
    config = {"sites": [str(s) for s in federation["sites"]], "out": str(out), "rounds": 3, "local_steps": 2,
              "round_timeout": 120.0, "plan_overrides": json.dumps(PLAN), "secagg": True}
    audit = federation["root"] / "audit-secagg"
    monkeypatch.setenv(AUDIT_ENV, str(audit))
    (root / "dagster_home").mkdir(exist_ok=True)
    with DagsterInstance.local_temp(str(root / "dagster_home")) as instance:
        job = make_definitions(settings).resolve_job_def("federate")
        result = job.execute_in_process(instance=instance, run_config={"ops": {"federated_model": {"config": config}}})
    assert result.success
    log = (out / "federation.log").read_text()
    assert log.count("resuming after round 2 from last.safetensors") == 2  # the killed server, then Dagster's
    assert "round 3: aggregated 3 sites with SecAgg+" in log
    rounds = read_json(out / "rounds.json")
    assert [r["round"] for r in rounds] == [1, 2, 3] and rounds[2]["sites"] == ["site-a", "site-b", "site-c"]
    meta = result.asset_materializations_for_node("federated_model")[0].metadata
    assert meta["version"].value == "2" and meta["rounds"].value == 3
    sent = [json.loads(line) for f in sorted(audit.glob("*.jsonl")) for line in f.read_text().splitlines()]
    sent = [m for m in sent if m["direction"] == "sent" and m["type"] == "train"]
    assert len(sent) == 3 * 4 and all("secaggplus_configs" in m["records"] for m in sent)  # 4 stages per site
    assert [v for m in sent for v in violations(m)] == []
    masked = [m for m in sent if "fitres.parameters" in m["records"]]
    assert len(masked) == 3 and all(m["records"]["fitres.parameters"]["items"] == {} for m in masked)
