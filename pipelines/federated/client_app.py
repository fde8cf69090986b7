"""The Flower ClientApp a site's SuperNode runs: fingerprint, local training and evaluation on the site's data.

The site folder comes from the SuperNode's own environment (``$MEDCORE_SITE_DIR``), never from a
message. Replies carry what :mod:`pipelines.federated.records` allows, nothing else: no case id,
pseudonym, path or voxel leaves the site.
"""

from __future__ import annotations

import json
import os

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from pipelines.federated.records import SITE_ENV, audit_mod, fingerprint_records, weights_record
from pipelines.federated.site import SiteData, evaluate_locally, prepare_site, site_fingerprint, train_locally

app = ClientApp(mods=[audit_mod])


def this_site() -> SiteData:
    site_dir = os.environ.get(SITE_ENV)
    if not site_dir:
        raise RuntimeError(f"${SITE_ENV} is not set: start the SuperNode with the site folder in its environment")
    return prepare_site(site_dir)


def received(message: Message) -> tuple[dict, dict, dict]:
    """The server's plan, round config and global weights from a train/evaluate message."""
    config = message.content["config"]
    return json.loads(str(config["plan"])), dict(config), message.content["arrays"].to_torch_state_dict()


@app.query()
def fingerprint(message: Message, context: Context) -> Message:
    return Message(fingerprint_records(site_fingerprint(this_site())), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    plan, config, weights = received(message)
    update = train_locally(this_site(), plan, weights, int(config["local-steps"]), float(config["lr"]),
                           float(config["proximal-mu"]), int(config["seed"]))
    metrics = MetricRecord({"num-examples": update.num_examples, "train_loss": update.train_loss})
    return Message(RecordDict({"arrays": weights_record(update.weights), "metrics": metrics}), reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    plan, _, weights = received(message)
    return Message(RecordDict({"metrics": MetricRecord(evaluate_locally(this_site(), plan, weights))}),
                   reply_to=message)
