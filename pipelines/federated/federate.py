"""``python -m pipelines federate --sites DIR ...``: a federation on this machine, then MLflow registration.

Puts the registry's champion in the server folder (the sites score it beside the global model),
starts a SuperLink and one SuperNode per site (each with the site folder in its own environment and
its own FLWR_HOME), runs the Flower app with ``flwr run``, stops every process, and registers the
global model like any other: the same pyfunc (``pipelines/mlflow_model.py``), lineage tags (sites
by name, each site's dataset hash, rounds, aggregation), the per-site test table as an artifact, and
the same champion rule as single-site registration (a paired bootstrap over the sites' test cases).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medcore.dicom.deid import KEY_ENV
from medcore.inferers.model_dir import SPEC_FILE
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
from pipelines.federated.server_app import AGGREGATIONS, CHAMPION_DIR, MODEL_DIR, SERVER_DIR_ENV
from pipelines.federated.site import site_name, site_out, site_params
from pipelines.params import resolve
from pipelines.steps.layout import read_json, write_json
from pipelines.steps.results import Bootstrap

CHAMPION_JSON = "champion.json"  # which registry version ``champion/`` holds


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


def global_model_dir(out: Path) -> Path:
    """``out/model``: the global model as the server wrote it and the sites scored it (a MODEL_DIR)."""
    model_dir = out / MODEL_DIR
    if not (model_dir / SPEC_FILE).is_file():
        raise FileNotFoundError(f"{model_dir}: no global model; the federation in {out} did not finish")
    return model_dir


def fetch_champion(params: dict, out: Path) -> dict | None:
    """Put the registry's champion in ``out/champion`` (a MODEL_DIR: the sites score it beside the global model)
    and its version in ``out/champion.json``; None, and neither file, when there is no champion."""
    import shutil
    import tempfile

    import mlflow

    from pipelines.inference import registered_model_dir
    from pipelines.steps.register import champion_version, client_for

    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / CHAMPION_DIR, ignore_errors=True)
    (out / CHAMPION_JSON).unlink(missing_ok=True)
    client, _ = client_for(params)
    name = params["register"]["model_name"]
    champ = champion_version(client, name)
    if champ is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{champ.version}", dst_path=tmp))
        shutil.copytree(registered_model_dir(local), out / CHAMPION_DIR)
    found = {"model_name": name, "version": str(champ.version)}
    write_json(out / CHAMPION_JSON, found)
    return found


def paired_case_dice(per_site: dict[str, dict]) -> tuple[dict[str, float], dict[str, float]]:
    """``(global model, champion)`` per-case Dice keyed ``site:index`` (the index in the site's fixed test order,
    so both lists pair up); cases without a score are left out (pure)."""
    def keyed(key: str) -> dict[str, float]:
        return {f"{site}:{i}": float(v) for site, m in sorted(per_site.items())
                for i, v in enumerate(m.get(key) or []) if math.isfinite(float(v))}

    return keyed("case_dice"), keyed("champion_case_dice")


def federated_promotion(champ, scored: dict | None, candidate: dict[str, float], champion: dict[str, float],
                        settings: dict, evaluation_set: str) -> tuple[Bootstrap | None, bool, str]:
    """The single-site champion rule (:func:`pipelines.steps.register.champion_rule`) on the sites' paired
    test cases: ``(statistic, promote, reason)``. A champion that the sites did not score (or another version
    than they scored) cannot be compared: no promotion, and the reason says so."""
    from pipelines.steps.register import champion_rule

    if champ is None:
        return champion_rule(candidate, None, settings)
    if scored is None or str(scored["version"]) != str(champ.version):
        what = ("was not scored at the sites (or not as a known registry version)" if scored is None
                else f"is not the version the sites scored ({scored['version']})")
        return None, False, (f"the champion (version {champ.version}) {what}; stays challenger (run with the "
                             "registry's champion in the server folder: python -m pipelines federate "
                             "--fetch-champion before the run)")
    return champion_rule(candidate, champion, settings, champ.tags.get("evaluation_set") != evaluation_set)


def register_federated(params: dict, out: Path, result: dict) -> dict:
    """Register the global model in MLflow (same pyfunc as single-site training) with its federation lineage,
    and apply the champion rule to the per-case Dice the sites reported."""
    import hashlib

    import mlflow
    import pandas as pd

    from pipelines.steps.register import (
        champion_version,
        client_for,
        code_commit,
        log_comparison,
        log_model_dir,
        move_alias,
    )

    model_dir = global_model_dir(out)
    per_site = result["per_site"]
    rows = [{"site": s, **{k: v for k, v in m.items() if not isinstance(v, list)}} for s, m in sorted(per_site.items())]
    pd.DataFrame(rows).to_csv(out / "per_site.csv", index=False)
    ours, theirs = paired_case_dice(per_site)
    cases = [{"site": key.rsplit(":", 1)[0], "case": int(key.rsplit(":", 1)[1]), "dice": v,
              **({"champion_dice": theirs[key]} if key in theirs else {})} for key, v in ours.items()]
    pd.DataFrame(cases, columns=["site", "case", "dice", "champion_dice"]).to_csv(out / "site_cases.csv", index=False)
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
        mlflow.log_artifact(str(out / "site_cases.csv"), "evaluation")
        mlflow.log_artifact(str(out / "plan.json"), "plan")
        info = log_model_dir(model_dir)
    version = mlflow.register_model(info.model_uri, name, tags=lineage)
    scored_file = out / CHAMPION_JSON
    scored = read_json(scored_file) if result.get("champion_scored") and scored_file.is_file() else None
    stat, promote, reason = federated_promotion(champion_version(client, name), scored, ours, theirs,
                                                params["register"], evaluation_set)
    if stat is not None:
        log_comparison(client, version, ours, theirs, stat)
    alias = "champion" if promote else "challenger"
    move_alias(client, name, version.version, alias)
    client.set_model_version_tag(name, version.version, "promotion", reason)
    return {"model_name": name, "version": str(version.version), "alias": alias, "reason": reason,
            "model_uri": f"models:/{name}@{alias}", "mean_dice": score,
            **({"bootstrap": dataclasses.asdict(stat)} if stat is not None else {}), **lineage}


def federate(site_dirs: Sequence[str | Path], params: dict, settings: FederationSettings, out: str | Path | None = None,
             tls: TLS | None = None, env: dict[str, str] | None = None) -> FederationResult:
    """The federation, then its registration; ``out`` defaults to ``OUTPUT_DIR/federated`` of ``params``."""
    out = Path(out) if out else Path(resolve(params, params["output_dir"]) or ".") / "federated"
    fetch_champion(params, out.resolve())
    result = run_federation(site_dirs, out, settings, tls, env)
    registered = register_federated(params, out.resolve(), result)
    write_json(out / "registered_model.json", registered)
    return FederationResult(out.resolve(), result, registered)
