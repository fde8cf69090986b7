"""``python -m pipelines federate --sites DIR ...``: a federation on this machine, then MLflow registration.

Starts a SuperLink and one SuperNode per site (each with the site folder in its own environment and
its own FLWR_HOME), runs the Flower app with ``flwr run``, stops every process, and registers the
global model like any other: the same pyfunc (``pipelines/mlflow_model.py``), lineage tags (sites
by name, each site's dataset hash, rounds, aggregation) and the per-site test table as an artifact.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medcore.dicom.deid import KEY_ENV
from pipelines.federated.processes import (
    TLS,
    base_env,
    flwr_run,
    free_port,
    start_superlink,
    start_supernode,
    stop,
    write_connection,
)
from pipelines.federated.records import SITE_ENV
from pipelines.federated.server_app import AGGREGATIONS, SERVER_DIR_ENV
from pipelines.federated.site import site_name, site_out, site_params
from pipelines.params import resolve
from pipelines.steps.layout import read_json, write_json


@dataclass(frozen=True)
class FederationSettings:
    """Rounds, local steps per round, fraction of sites per round, aggregation and the plan overrides."""

    rounds: int = 3
    local_steps: int = 20
    fraction: float = 1.0
    min_sites: int = 1
    aggregation: str = "fedavg"
    proximal_mu: float = 0.01
    lr: float = 0.0  # 0: the plan's learning rate
    round_timeout: float = 600.0
    prepare_timeout: float = 900.0
    seed: int = 0
    plan_overrides: dict = field(default_factory=dict)
    secagg: bool = False  # SecAgg+: the server sees only the sum of the sites' masked updates

    def run_config(self, num_sites: int) -> dict:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation {self.aggregation!r}: choose one of {AGGREGATIONS}")
        values = {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}
        values["plan-overrides"] = json.dumps(self.plan_overrides)
        values["num-sites"] = num_sites
        return values


@dataclass(frozen=True)
class FederationResult:
    """Where the federation wrote (server folder), what it reported, and the registered model version."""

    out: Path
    result: dict
    registered: dict


def check_sites(site_dirs: Sequence[str | Path]) -> dict[str, Path]:
    """``{site name: folder}``; names must be unique (they are the sites' only identity)."""
    sites: dict[str, Path] = {}
    for d in site_dirs:
        name = site_name(d)
        if name in sites:
            raise ValueError(f"two sites are named {name!r} ({sites[name]} and {d}); site folder names must differ")
        site_params(d)
        sites[name] = Path(d).resolve()
    if not sites:
        raise ValueError("no sites: pass --sites DIR [DIR ...]")
    return sites


def run_federation(site_dirs: Sequence[str | Path], out: str | Path, settings: FederationSettings,
                   tls: TLS | None = None, env: dict[str, str] | None = None) -> dict:
    """Run the federation with real processes on 127.0.0.1; return the server's ``result.json``.

    ``env`` is added to every process's environment (tests set ``$MEDCORE_FED_AUDIT`` there)."""
    sites = check_sites(site_dirs)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").unlink(missing_ok=True)
    port = free_port()
    address = f"127.0.0.1:{port}"
    home = out / "flwr-home"
    write_connection(home, address, tls)
    extra = dict(env or {})
    link = start_superlink(out, port, base_env(home, **{SERVER_DIR_ENV: str(out)}, **extra), tls)
    nodes = {}
    try:
        for name, folder in sites.items():
            work = site_out(folder) / "federated"
            node_env = base_env(work / "flwr-home", **{SITE_ENV: str(folder)}, **extra)
            node_env.pop(KEY_ENV, None)  # each site de-identifies with its own key (its params' deid_key_file)
            nodes[name] = start_supernode(folder, work, address, node_env, tls)
        write_json(out / "processes.json", {"superlink": link.pid, "supernodes": {n: p.pid for n, p in nodes.items()}})
        code = flwr_run(settings.run_config(len(sites)), base_env(home, **extra), out / "flwr-run.log")
    finally:
        for proc in [*nodes.values(), link]:
            stop(proc)
    if not (out / "result.json").is_file():
        log = out / "federation.log"
        tail = log.read_text()[-2000:] if log.is_file() else (out / "flwr-run.log").read_text()[-2000:]
        raise RuntimeError(f"the federation ended without result.json (flwr run exit {code}); log tail:\n{tail}")
    return read_json(out / "result.json")


def mean_dice(per_site: dict[str, dict]) -> float:
    """The test Dice over all sites' test cases (each site's mean weighted by its test-case count)."""
    n = sum(int(m.get("num-examples", 0)) for m in per_site.values() if "dice_mean" in m)
    return sum(m["dice_mean"] * int(m["num-examples"]) for m in per_site.values() if "dice_mean" in m) / max(n, 1)


def export_model_dir(out: Path, result: dict) -> Path:
    """``out/model``: the global model as a medcore MODEL_DIR (network config, safetensors, preprocessing)."""
    from medcore.engine.checkpoint import load_checkpoint
    from medcore.engine.segmentation import preprocessing_configs
    from medcore.inferers.model_dir import save_model_dir
    from pipelines.federated.site import new_model

    plan = read_json(out / "plan.json")
    model = new_model(plan, load_checkpoint(out / "global.safetensors")["weights"])
    save_model_dir(out / "model", model, preprocessing=preprocessing_configs(plan), inference=plan["inference"],
                   labels=plan["labels"], provenance={"federated": True, "sites": result["sites"],
                                                      "rounds": result["rounds"], "aggregation": result["aggregation"]})
    return out / "model"


def register_federated(params: dict, out: Path, result: dict) -> dict:
    """Register the global model in MLflow (same pyfunc as single-site training) with its federation lineage."""
    import hashlib

    import mlflow
    import pandas as pd

    from pipelines import serving
    from pipelines.steps.register import MODEL_CODE, client_for, code_commit, decide_promotion

    model_dir = export_model_dir(out, result)
    per_site = result["per_site"]
    rows = [{"site": s, **m} for s, m in sorted(per_site.items())]
    pd.DataFrame(rows).to_csv(out / "per_site.csv", index=False)
    score = mean_dice(per_site)
    evaluation_set = hashlib.sha256(json.dumps(
        {s: [result["dataset_hashes"][s], m.get("num-examples")] for s, m in sorted(per_site.items())},
        sort_keys=True).encode()).hexdigest()[:20]
    name = params["register"]["model_name"]
    lineage = {"federated": "true", "sites": ",".join(result["sites"]),
               "site_dataset_hashes": json.dumps(result["dataset_hashes"], sort_keys=True),
               "rounds": str(result["rounds"]), "aggregation": result["aggregation"],
               "refused_sites": ",".join(sorted(result["refused"])) or "none",
               "evaluation_set": evaluation_set, "mean_dice": f"{score:.6f}", "code_commit": code_commit()}
    client, exp_id = client_for(params)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"federated-{time.strftime('%Y%m%d-%H%M%S')}",
                          tags=lineage):
        for record in read_json(out / "rounds.json"):
            mlflow.log_metrics({k: float(v) for k, v in record.items() if k == "train_loss"}, step=int(record["round"]))
        mlflow.log_metrics({"eval_mean_dice": score, **{f"{s}_dice_mean": float(m["dice_mean"])
                                                        for s, m in per_site.items() if "dice_mean" in m}})
        mlflow.log_artifact(str(out / "per_site.csv"), "evaluation")
        mlflow.log_artifact(str(out / "plan.json"), "plan")
        info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_CODE),  # as pipelines/steps/register.py
                                       artifacts={"model_dir": str(model_dir)},
                                       pip_requirements=["medcore", "mlflow", "torch", "pandas"],
                                       signature=serving.signature(),
                                       input_example=(pd.DataFrame({serving.IMAGE_COLUMN: [serving.example_request()]}),
                                                      {"output_format": "nifti"}))
    version = mlflow.register_model(info.model_uri, name, tags=lineage)
    try:
        champ = client.get_model_version_by_alias(name, "champion")
    except mlflow.exceptions.MlflowException:
        champ = None
    if champ is None:
        promote, reason = decide_promotion(None)
    elif champ.tags.get("evaluation_set") == evaluation_set:  # per-site means only: no per-case bootstrap here
        margin, champion_dice = float(params["register"]["min_improvement"]), float(champ.tags["mean_dice"])
        promote = score > champion_dice + margin
        reason = (f"mean Dice {score:.4f} {'beats' if promote else 'does not beat'} the champion's "
                  f"{champion_dice:.4f} (+{margin}) on the same per-site evaluation set")
    else:
        promote, reason = False, "the champion was scored on another evaluation set; compare them before promoting"
    alias = "champion" if promote else "challenger"
    client.set_registered_model_alias(name, alias, version.version)
    client.set_model_version_tag(name, version.version, "promotion", reason)
    return {"model_name": name, "version": str(version.version), "alias": alias, "reason": reason,
            "model_uri": f"models:/{name}@{alias}", "mean_dice": score, **lineage}


def federate(site_dirs: Sequence[str | Path], params: dict, settings: FederationSettings, out: str | Path | None = None,
             tls: TLS | None = None, env: dict[str, str] | None = None) -> FederationResult:
    """The federation, then its registration; ``out`` defaults to ``OUTPUT_DIR/federated`` of ``params``."""
    out = Path(out) if out else Path(resolve(params, params["output_dir"]) or ".") / "federated"
    result = run_federation(site_dirs, out, settings, tls, env)
    registered = register_federated(params, out.resolve(), result)
    write_json(out / "registered_model.json", registered)
    return FederationResult(out.resolve(), result, registered)
