"""The Flower ServerApp: plan from the sites' fingerprints, rounds of local training and FedAvg, evaluation.

The server folder comes from the SuperLink's environment (``$MEDCORE_FED_DIR``), never from a site.
After every round the global weights and the round number are written as a safetensors checkpoint
(``checkpoints/last.safetensors``, medcore's checkpoint format: tensors and JSON, no pickle); a
server started again with the same plan resumes after that round. A site that does not answer
within ``round-timeout`` (or whose SuperNode leaves) is named as missing in the log, and the round
is aggregated from the others. At the end the global model is written as a MODEL_DIR (``model/``) and
sent to every site with, when the server folder holds one (``champion/``, put there by the coordinator),
the registry's champion: each site scores both on its own test cases and returns numbers only. Files:
``plan.json``, ``sites.json``, ``federation.log``, ``rounds.json``, ``model/``, ``per_site.json`` and
``result.json`` (written last).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx

from medcore.inferers.model_dir import SPEC_FILE
from pipelines.federated.plan import federated_plan, plan_key
from pipelines.federated.records import model_records, read_fingerprint, weights_record
from pipelines.steps.layout import write_json

SERVER_DIR_ENV = "MEDCORE_FED_DIR"
MODEL_DIR = "model"  # the global model, in the server folder
CHAMPION_DIR = "champion"  # the registry's champion for the sites to score, when the coordinator put one there
AGGREGATIONS = ("fedavg", "fedprox")

app = ServerApp()


@dataclass(frozen=True)
class Settings:
    """The run config (``[tool.flwr.app.config]`` of the app, overridden by ``flwr run --run-config``)."""

    rounds: int
    local_steps: int
    fraction: float
    num_sites: int
    min_sites: int
    aggregation: str
    proximal_mu: float
    lr: float
    round_timeout: float
    prepare_timeout: float
    seed: int
    plan_overrides: dict
    secagg: bool

    @classmethod
    def from_run_config(cls, cfg: dict) -> Settings:
        s = cls(int(cfg["rounds"]), int(cfg["local-steps"]), float(cfg["fraction"]), int(cfg["num-sites"]),
                int(cfg["min-sites"]), str(cfg["aggregation"]), float(cfg["proximal-mu"]), float(cfg["lr"]),
                float(cfg["round-timeout"]), float(cfg["prepare-timeout"]), int(cfg["seed"]),
                json.loads(str(cfg["plan-overrides"]) or "{}"), bool(cfg["secagg"]))
        if s.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation {s.aggregation!r}: choose one of {AGGREGATIONS}")
        if not 0 < s.fraction <= 1 or s.rounds < 1 or s.local_steps < 1:
            raise ValueError(f"need 0 < fraction <= 1, rounds >= 1 and local-steps >= 1; got {s}")
        if s.secagg and s.aggregation != "fedavg":
            raise ValueError("secagg runs FedAvg (the server sees only the sum of masked updates); set aggregation "
                             "to fedavg")
        return s


class Log:
    """Lines to ``federation.log`` and stdout (which ``flwr run --stream`` shows)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, line: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {line}"
        print(line, flush=True)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")


def exchange(grid: Grid, sites: dict[int, str], message_type: str, content: RecordDict, group: str,
             timeout: float) -> tuple[dict[str, Message], dict[str, str]]:
    """Send ``content`` to every node in ``sites``; ``({site: reply}, {site: why it is missing})``.

    Waits until all replied, ``timeout`` passed, or the nodes still owed a reply left the SuperLink."""
    sent = {}
    for node in sites:
        msg = Message(content, dst_node_id=node, message_type=message_type, group_id=group)
        sent[next(iter(grid.push_messages([msg])))] = node
    replies: dict[str, Message] = {}
    missing: dict[str, str] = {}
    end = time.time() + timeout
    while sent and time.time() < end:
        for reply in grid.pull_messages(list(sent)):
            node = sent.pop(reply.metadata.reply_to_message_id)
            if reply.has_error():
                missing[sites[node]] = f"error: {reply.error.reason}"
            else:
                replies[sites[node]] = reply
        online = set(grid.get_node_ids())
        for mid, node in list(sent.items()):
            if node not in online:
                missing[sites[node]] = "its SuperNode left the federation"
                sent.pop(mid)
        if sent:
            time.sleep(1.0)
    for node in sent.values():
        missing[sites[node]] = f"no reply within {timeout:.0f} s"
    return replies, missing


def wait_for_sites(grid: Grid, settings: Settings, log: Log) -> list[int]:
    end = time.time() + settings.prepare_timeout
    while len(list(grid.get_node_ids())) < settings.num_sites and time.time() < end:
        time.sleep(0.5)
    nodes = sorted(grid.get_node_ids())
    if len(nodes) < settings.min_sites:
        raise RuntimeError(f"{len(nodes)} SuperNode(s) connected, fewer than min-sites={settings.min_sites}")
    log(f"{len(nodes)} of {settings.num_sites} SuperNodes connected")
    return nodes


def plain_training(grid: Grid, chosen: dict[int, str], weights: dict, config: ConfigRecord, rnd: int,
                   settings: Settings, strategy, log: Log) -> tuple[dict, dict]:
    """One round: every chosen site trains from ``weights``; the strategy averages the replies."""
    content = RecordDict({"arrays": weights_record(weights), "config": config})
    replies, missing = exchange(grid, chosen, "train", content, str(rnd), settings.round_timeout)
    for name, why in sorted(missing.items()):
        log(f"round {rnd}: site {name} missing ({why})")
    metrics = {}
    if replies:
        arrays, aggregated = strategy.aggregate_train(rnd, list(replies.values()))
        weights, metrics = arrays.to_torch_state_dict(), dict(aggregated or {})
    log(f"round {rnd}: aggregated {sorted(replies) or 'no site; the global model is unchanged'} "
        f"({settings.aggregation}); train_loss {metrics.get('train_loss', float('nan')):.4f}")
    return weights, {"sites": sorted(replies), "missing": missing, **metrics}


def secure_training(grid: Grid, context: Context, chosen: dict[int, str], weights: dict, config: ConfigRecord,
                    plan: dict, rnd: int, settings: Settings, log: Log) -> tuple[dict, dict]:
    """One SecAgg+ round: the server receives masked updates and learns only their weighted sum."""
    from pipelines.federated.secure import secure_round
    from pipelines.federated.site import new_model

    keys = list(new_model(plan).state_dict())
    new = secure_round(grid, context, sorted(chosen), weights, keys, dict(config), rnd, settings.round_timeout)
    if new is None:
        log(f"round {rnd}: SecAgg+ halted (too few sites answered); the global model is unchanged")
        return weights, {"sites": [], "missing": {}, "secagg": 1}
    log(f"round {rnd}: aggregated {len(chosen)} sites with SecAgg+ (fedavg of masked updates)")
    return new, {"sites": sorted(chosen.values()), "missing": {}, "secagg": 1}


def sample_sites(sites: dict[int, str], fraction: float, min_sites: int, seed: int, rnd: int) -> dict[int, str]:
    """``fraction`` of the sites (at least ``min_sites``), drawn reproducibly per round."""
    k = min(len(sites), max(min_sites, round(fraction * len(sites))))
    chosen = random.Random(seed * 100003 + rnd).sample(sorted(sites), k)
    return {n: sites[n] for n in sorted(chosen)}


def initial_weights(plan: dict, out: Path, seed: int, log: Log) -> tuple[int, dict, list]:
    """``(last completed round, weights, round history)``: from the checkpoint when it matches the plan."""
    import torch

    from medcore.engine.checkpoint import load_checkpoint
    from pipelines.federated.site import new_model

    path = out / "checkpoints" / "last.safetensors"
    if path.is_file():
        state = load_checkpoint(path)
        if state["plan_key"] == plan_key(plan):
            log(f"resuming after round {state['round']} from {path.name}")
            return int(state["round"]), state["weights"], list(state["history"])
        log(f"{path.name} was written for another plan; starting from round 0")
    torch.manual_seed(seed)
    return 0, new_model(plan).state_dict(), []


@app.main()
def main(grid: Grid, context: Context) -> None:
    import os

    from medcore.engine.checkpoint import save_checkpoint
    from medcore.engine.schedulers import build_schedule
    from pipelines.federated.site import save_plan_model

    settings = Settings.from_run_config(dict(context.run_config))
    out = Path(os.environ[SERVER_DIR_ENV])
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "federation.log")
    nodes = wait_for_sites(grid, settings, log)
    node_names = {n: f"node-{i}" for i, n in enumerate(nodes)}
    replies, missing = exchange(grid, node_names, "query", RecordDict(), "fingerprint", settings.prepare_timeout)
    fps = {}
    for node, name in node_names.items():
        if name in replies:
            fp = read_fingerprint(replies[name].content)
            node_names[node] = fp["site"]
            fps[fp["site"]] = fp
    for why in missing.values():
        log(f"a SuperNode sent no fingerprint ({why})")
    fed = federated_plan(fps, settings.plan_overrides)
    for name, reason in fed.refused.items():
        log(f"site {name} refused: {reason}")
    sites = {n: s for n, s in node_names.items() if s in fed.accepted}
    log(f"federation of {len(sites)} sites: {sorted(sites.values())}; aggregation {settings.aggregation}")
    plan = fed.plan
    write_json(out / "plan.json", plan)
    write_json(out / "sites.json", {"accepted": list(fed.accepted), "refused": fed.refused,
                                    "cases": {s: fps[s]["num_cases"] for s in fed.accepted},
                                    "dataset_hashes": {s: fps[s]["dataset_hash"] for s in fed.accepted}})
    done, weights, history = initial_weights(plan, out, settings.seed, log)
    strategy = FedProx(proximal_mu=settings.proximal_mu) if settings.aggregation == "fedprox" else FedAvg()
    base_lr = settings.lr or float(plan["optimizer"]["lr"])
    mu = settings.proximal_mu if settings.aggregation == "fedprox" else 0.0
    total_steps = settings.rounds * settings.local_steps  # the plan's lr schedule runs over all rounds' steps
    schedule = build_schedule(plan["schedule"], total_steps)
    for rnd in range(done + 1, settings.rounds + 1):
        chosen = sample_sites(sites, settings.fraction, settings.min_sites, settings.seed, rnd)
        first = (rnd - 1) * settings.local_steps
        config = ConfigRecord({"plan": json.dumps(plan), "round": rnd, "local-steps": settings.local_steps,
                               "lr": base_lr, "schedule-start": first, "schedule-steps": total_steps,
                               "proximal-mu": mu, "seed": settings.seed + rnd})
        lr = base_lr * schedule.factor(first)  # at the round's first step
        log(f"round {rnd}: training at {sorted(chosen.values())}{' with SecAgg+' if settings.secagg else ''}")
        if settings.secagg:
            weights, record = secure_training(grid, context, chosen, weights, config, plan, rnd, settings, log)
        else:
            weights, record = plain_training(grid, chosen, weights, config, rnd, settings, strategy, log)
        history.append({"round": rnd, "lr": lr, **record})
        save_checkpoint({"round": rnd, "weights": weights, "plan_key": plan_key(plan), "history": history},
                        out / "checkpoints" / "last.safetensors")
    write_json(out / "rounds.json", history)
    save_checkpoint({"weights": weights}, out / "global.safetensors")
    model_dir = save_plan_model(out / MODEL_DIR, plan, weights, {"federated": True, "sites": list(fed.accepted),
                                                                 "rounds": settings.rounds,
                                                                 "aggregation": settings.aggregation})
    per_site, missing, champion = evaluation(grid, sites, model_dir, out / CHAMPION_DIR, settings, log)
    write_json(out / "per_site.json", per_site)
    result = {"rounds": settings.rounds, "aggregation": settings.aggregation, "sites": list(fed.accepted),
              "refused": fed.refused, "per_site": per_site, "champion_scored": champion,
              "dataset_hashes": {s: fps[s]["dataset_hash"] for s in fed.accepted}, "evaluation_missing": missing,
              "missing_by_round": {str(h["round"]): h["missing"] for h in history if h["missing"]},
              "plan_key": plan_key(plan), "settings": {k: v for k, v in settings.__dict__.items()}}
    write_json(out / "result.json", result)
    log(f"federation finished: {settings.rounds} rounds; per-site test Dice "
        f"{ {k: round(float(cast(float, v.get('dice_mean', float('nan')))), 4) for k, v in per_site.items()} }")


def evaluation(grid: Grid, sites: dict[int, str], model_dir: Path, champion_dir: Path, settings: Settings,
               log: Log) -> tuple[dict, dict, bool]:
    """Every site scores the global model and the champion (when ``champion_dir`` holds one) on its test cases;
    ``({site: metrics}, {site: why it is missing}, whether the champion was sent)``."""
    champion = (champion_dir / SPEC_FILE).is_file()
    content = RecordDict({**model_records(model_dir, "model"),
                          **(model_records(champion_dir, "champion") if champion else {})})
    log(f"evaluation: the global model{' and the champion' if champion else ''} at {sorted(sites.values())}")
    replies, missing = exchange(grid, sites, "evaluate", content, "evaluate", settings.round_timeout)
    for name, why in sorted(missing.items()):
        log(f"evaluation: site {name} missing ({why})")
    return {name: dict(reply.content["metrics"]) for name, reply in sorted(replies.items())}, missing, champion
