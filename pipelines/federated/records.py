"""What travels between a site and the server, as Flower records, and the audit of every reply a site sends.

Site to server, by message type:

- ``query`` (once): ConfigRecord ``identity`` = site name, dataset hash, modality, class names; MetricRecord
  ``fingerprint`` = shape, spacing and foreground-intensity statistics, case count, label values.
- ``train``: ArrayRecord ``arrays`` (the locally trained parameters) and MetricRecord ``metrics``
  (``num-examples``, ``train_loss``).
- ``evaluate``: MetricRecord ``metrics`` (``num-examples``, Dice per class and their mean, and the lists
  :data:`CASE_LISTS`: the mean Dice of each test case of the global model and of the registry's
  champion, in the site's own fixed order, so the server can pair them for the champion rule; numbers
  only, no case id).
- ``train`` under SecAgg+: ConfigRecord ``secaggplus_configs`` (the protocol's keys, key shares and the masked
  parameter vector) and Flower's ``fitres.*`` records, whose parameters the mod has emptied.

Server to site, the ``evaluate`` message carries each model to score as a MODEL_DIR's content
(:func:`model_records`): its weights (ArrayRecord) and its ``model.json`` (network config, preprocessing,
inference settings, labels; no provenance) as a ConfigRecord string. That is a model, not patient data,
and a site rebuilds it without pickle (:func:`received_model_dir`).

:data:`ALLOWED` states exactly that; :func:`audit_mod`, a ClientApp mod, writes a description of each
outgoing reply when ``$MEDCORE_FED_AUDIT`` names a folder, so a test can check every message of a run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from medcore.inferers.model_dir import SPEC_FILE, parse_spec, read_spec, read_state, write_model_dir

AUDIT_ENV = "MEDCORE_FED_AUDIT"
SITE_ENV = "MEDCORE_SITE_DIR"
IDENTITY_KEYS = ("site", "dataset_hash", "modality", "class_names")
FINGERPRINT_KEYS = ("num_cases", "median_shape", "min_shape", "max_shape", "median_spacing", "spacing_varies",
                    "fg_mean", "fg_std", "fg_p00_5", "fg_p99_5", "foreground_max_ratio", "labels_present")
# message type -> {record name: record kind}
ALLOWED = {
    "query": {"identity": "ConfigRecord", "fingerprint": "MetricRecord"},
    "train": {"arrays": "ArrayRecord", "metrics": "MetricRecord"},
    "evaluate": {"metrics": "MetricRecord"},
}
CASE_LISTS = ("case_dice", "champion_case_dice")  # evaluate: per-case numbers in the site's fixed order
SECAGG_TRAIN = {RECORD_KEY_CONFIGS: "ConfigRecord", "fitres.parameters": "ArrayRecord",
                "fitres.num_examples": "MetricRecord", "fitres.metrics": "ConfigRecord",
                "fitres.status": "ConfigRecord"}
SECAGG_KEYS = {v for k, v in vars(Key).items() if k.isupper()}


def fingerprint_records(fp: dict) -> RecordDict:
    """A site fingerprint (``pipelines.federated.site.site_fingerprint``) as a query reply."""
    fi = fp["foreground_intensity"]
    identity = ConfigRecord({"site": fp["site"], "dataset_hash": fp["dataset_hash"], "modality": fp["modality"],
                             "class_names": [f"{int(v)}:{k}" for k, v in sorted(fp["labels"].items(),
                                                                                   key=lambda kv: kv[1])]})
    stats = MetricRecord({
        "num_cases": int(fp["num_cases"]), "median_shape": [float(v) for v in fp["median_shape"]],
        "min_shape": [int(v) for v in fp["min_shape"]], "max_shape": [int(v) for v in fp["max_shape"]],
        "median_spacing": [float(v) for v in fp["median_spacing"]], "spacing_varies": int(fp["spacing_varies"]),
        "fg_mean": float(fi["mean"]), "fg_std": float(fi["std"]), "fg_p00_5": float(fi["p00_5"]),
        "fg_p99_5": float(fi["p99_5"]), "foreground_max_ratio": float(fp["foreground_max_ratio"]),
        "labels_present": [int(v) for v in fp["labels_present"]] or [0],
    })
    return RecordDict({"identity": identity, "fingerprint": stats})


def read_fingerprint(content: RecordDict) -> dict:
    """The fingerprint dict back from a query reply (the fields the planner reads)."""
    identity, stats = cast(Any, content["identity"]), cast(Any, content["fingerprint"])
    labels = {}
    for item in identity["class_names"]:
        value, name = str(item).split(":", 1)
        labels[name] = int(value)
    return {"site": str(identity["site"]), "dataset_hash": str(identity["dataset_hash"]),
            "modality": str(identity["modality"]), "labels": labels,
            "num_cases": int(stats["num_cases"]), "median_shape": list(stats["median_shape"]),
            "min_shape": list(stats["min_shape"]), "max_shape": list(stats["max_shape"]),
            "median_spacing": list(stats["median_spacing"]), "spacing_varies": bool(stats["spacing_varies"]),
            "foreground_intensity": {"mean": stats["fg_mean"], "std": stats["fg_std"], "p00_5": stats["fg_p00_5"],
                                     "p99_5": stats["fg_p99_5"]},
            "foreground_max_ratio": stats["foreground_max_ratio"], "labels_present": list(stats["labels_present"])}


def weights_record(weights: dict) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in weights.items()})


def model_records(model_dir: Path, name: str) -> dict:
    """A MODEL_DIR as records: ``name``, its weights, and ``name-spec``, its ``model.json`` without provenance
    (what a site needs to run the model, nothing about where it came from)."""
    spec = dataclasses.replace(read_spec(model_dir), provenance={})
    return {name: weights_record(read_state(model_dir)), f"{name}-spec": ConfigRecord({SPEC_FILE: spec.to_json()})}


def received_model_dir(content: RecordDict, name: str, directory: Path) -> Path:
    """The model sent as ``name`` (:func:`model_records`) written to ``directory`` as a MODEL_DIR; its
    ``model.json`` is validated as any other."""
    spec = cast(Any, content[f"{name}-spec"])[SPEC_FILE]
    parsed = parse_spec(json.loads(str(spec)), f"{SPEC_FILE} of the {name} model received from the server")
    return write_model_dir(directory, parsed, cast(ArrayRecord, content[name]).to_torch_state_dict())


def describe_records(content: RecordDict) -> dict:
    """Every record: its kind, and per entry the dtype and shape (arrays) or the value."""
    out = {}
    for name, record in content.items():
        entry: dict = {"kind": type(record).__name__, "items": {}}
        for key, value in record.items():
            if isinstance(record, ArrayRecord):
                array = cast(Any, value)
                entry["items"][key] = {"dtype": array.dtype, "shape": list(array.shape)}
            else:
                entry["items"][key] = value
        out[name] = entry
    return out


def describe(message: Message) -> dict:
    """A message's type, and its error or its records (:func:`describe_records`)."""
    if message.has_error():
        return {"type": message.metadata.message_type, "error": True, "reason": message.error.reason, "records": {}}
    return {"type": message.metadata.message_type, "error": False, "records": describe_records(message.content)}


def violations(described: dict) -> list[str]:
    """What in one described reply is not in :data:`ALLOWED` (empty when it only carries what it may)."""
    if described["error"]:
        return []
    kind = described["type"].split(".")[0]
    if kind == "train" and RECORD_KEY_CONFIGS in described["records"]:
        return secagg_violations(described["records"])
    allowed = ALLOWED.get(kind)
    if allowed is None:
        return [f"unexpected message type {described['type']!r}"]
    out = []
    for name, record in described["records"].items():
        if allowed.get(name) != record["kind"]:
            out.append(f"{kind}: record {name!r} of kind {record['kind']} is not allowed")
        elif record["kind"] == "MetricRecord":
            bad = [k for k, v in record["items"].items()
                   if not (isinstance(v, (int, float)) or (isinstance(v, list) and
                                                            all(isinstance(x, (int, float)) for x in v)))]
            if kind != "query":  # lists of numbers: the fingerprint's, and evaluate's per-case Dice
                bad += [k for k, v in record["items"].items()
                        if isinstance(v, list) and not (kind == "evaluate" and k in CASE_LISTS)]
            out += [f"{kind}: metric {k!r} is not a scalar" for k in bad]
        elif record["kind"] == "ConfigRecord" and sorted(record["items"]) != sorted(IDENTITY_KEYS):
            out.append(f"{kind}: identity keys {sorted(record['items'])} are not {sorted(IDENTITY_KEYS)}")
    return out


def secagg_violations(records: dict) -> list[str]:
    """A SecAgg+ train reply may carry protocol values and the masked vector, never plain parameters."""
    out = []
    for name, record in records.items():
        items = record["items"]
        if SECAGG_TRAIN.get(name) != record["kind"]:
            out.append(f"secagg train: record {name!r} of kind {record['kind']} is not allowed")
        elif name == RECORD_KEY_CONFIGS:
            out += [f"secagg train: key {k!r} is not a SecAgg+ key" for k in items
                    if k.split(":")[0] not in SECAGG_KEYS]
        elif name == "fitres.parameters" and items:
            out.append("secagg train: unmasked parameters left in fitres.parameters")
        elif name == "fitres.status" and sorted(items) != ["code", "message"]:
            out.append(f"secagg train: status keys {sorted(items)}")
        elif name in ("fitres.metrics", "fitres.num_examples"):
            out += [f"secagg train: {name} {k!r} is not a scalar" for k, v in items.items()
                    if not isinstance(v, (int, float))]
    return out


def audit_mod(message: Message, context: Context, call_next) -> Message:
    """ClientApp mod: pass the message on; when ``$MEDCORE_FED_AUDIT`` is set, append a description of the
    message received and of the reply sent to ``$MEDCORE_FED_AUDIT/<site>.jsonl``."""
    folder = os.environ.get(AUDIT_ENV)
    reply = call_next(message, context)
    if folder:
        site = Path(os.environ.get(SITE_ENV, "unknown")).name
        Path(folder).mkdir(parents=True, exist_ok=True)
        with open(Path(folder) / f"{site}.jsonl", "a") as fh:
            for direction, msg in (("received", message), ("sent", reply)):
                fh.write(json.dumps({"direction": direction, **describe(msg)}, default=str) + "\n")
    return reply
