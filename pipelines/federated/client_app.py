"""The Flower ClientApp a site's SuperNode runs: fingerprint, local training and evaluation on the site's data.

The site folder comes from the SuperNode's own environment (``$MEDCORE_SITE_DIR``), never from a
message. Replies carry what :mod:`pipelines.federated.records` allows, nothing else: no case id,
pseudonym, path or voxel leaves the site.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, cast

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from pipelines.federated.plan import plan_key
from pipelines.federated.records import (
    SITE_ENV,
    audit_mod,
    fingerprint_records,
    received_model_dir,
    weights_record,
)
from pipelines.federated.secure import fit_inputs, fit_reply, is_secure_fit, secagg_mod
from pipelines.federated.site import (
    SiteData,
    evaluate_locally,
    new_model,
    prepare_site,
    site_fingerprint,
    train_locally,
)

app = ClientApp(mods=[audit_mod, secagg_mod])  # the audit sees exactly what leaves, after SecAgg+ masking


def this_site() -> SiteData:
    site_dir = os.environ.get(SITE_ENV)
    if not site_dir:
        raise RuntimeError(f"${SITE_ENV} is not set: start the SuperNode with the site folder in its environment")
    return prepare_site(site_dir)


def received(message: Message) -> tuple[dict, dict, dict]:
    """The server's plan, round config and global weights from a train message."""
    config = message.content["config"]
    arrays = cast(ArrayRecord, message.content["arrays"])
    return json.loads(str(config["plan"])), dict(config), arrays.to_torch_state_dict()


@app.query()
def fingerprint(message: Message, context: Context) -> Message:
    return Message(fingerprint_records(site_fingerprint(this_site())), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    if is_secure_fit(message.content):  # a SecAgg+ round: Flower's fit records, masked by secagg_mod
        arrays, config = fit_inputs(message.content)
        plan = json.loads(str(config["plan"]))
        keys = list(new_model(plan).state_dict())
        update = local_update(plan, config, dict(zip(keys, arrays)), context.run_id)
        return Message(fit_reply(update.weights, keys, update.num_examples, update.train_loss), reply_to=message)
    plan, config, weights = received(message)
    update = local_update(plan, config, weights, context.run_id)
    metrics = MetricRecord({"num-examples": update.num_examples, "train_loss": update.train_loss})
    return Message(RecordDict({"arrays": weights_record(update.weights), "metrics": metrics}), reply_to=message)


def local_update(plan: dict, config: dict, weights: dict, run_id: int):
    """Local training from ``weights``; the optimiser's moments carry over between this run's rounds at the site."""
    return train_locally(this_site(), plan, weights, int(config["local-steps"]), float(config["lr"]),
                         float(config["proximal-mu"]), int(config["seed"]), state_key=f"{run_id}:{plan_key(plan)}",
                         schedule=(int(config["schedule-start"]), int(config["schedule-steps"])))


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Score the global model (``model``) and, when the server sent one, the registry's champion (``champion``)
    on this site's test cases, both as MODEL_DIRs the same way; reply with numbers only."""
    site = this_site()
    site.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="evaluate-", dir=site.work_dir) as tmp:
        models = {name: received_model_dir(message.content, name, Path(tmp) / name)
                  for name in ("model", "champion") if name in message.content}
        metrics = cast(Any, evaluate_locally(site, models["model"], models.get("champion")))
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=message)
