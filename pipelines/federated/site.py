"""One site of a federation: its data (prepared by the site's own pipeline), local training and evaluation.

A site folder holds ``params.yaml`` (inbox, output folder, de-identification key file: the same
params a single-site pipeline uses), or, for data converted and de-identified already, an MSD-layout
dataset (``dataset.json``, ``imagesTr/``, ``labelsTr/``; outputs go to ``outputs/`` beside them).
The folder's name is the site's name, the only identity that leaves it. Preparation runs the site's
ingest, convert and dataset stages (skipped when the inbox has not changed since the last
preparation). A pipeline site trains on its dataset's ``training`` patients and tests on its ``test``
patients: the split its dataset stage made per patient, by a keyed hash of the pseudonym, as a single
site's evaluation does. An MSD-layout site (converted already, one case per patient) holds out a fixed
fraction of its cases. Nothing here sends anything: :mod:`pipelines.federated.client_app` decides what
leaves.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines.params import load_params, resolve
from pipelines.steps.dataset import DATASET_JSON
from pipelines.steps.layout import Layout, read_json, sha256_file, tree_hash, write_json

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TEST_SEED = 0
MSD_TEST_FRACTION = 0.1  # cases held out per MSD-layout site (a pipeline site has its test patients)


def site_name(site_dir: str | Path) -> str:
    """The site's name: its folder's name, which must be a plain identifier (it is sent and registered)."""
    name = Path(site_dir).resolve().name
    if not SITE_NAME.match(name):
        raise ValueError(f"site folder {site_dir}: its name {name!r} is not a plain site name (letters, digits, "
                         "'.', '_', '-'); it is what the server and the registry see, so rename the folder")
    return name


@dataclass(frozen=True)
class SiteData:
    """A prepared site: name, dataset hash and labels, its training and held-out test cases, its output folder."""

    name: str
    dataset_hash: str
    modality: str
    labels: dict[str, int]
    train: tuple[dict, ...]
    test: tuple[dict, ...]
    out: Path

    @property
    def cache_dir(self) -> Path:
        return self.out / "cache"

    @property
    def work_dir(self) -> Path:
        return self.out / "federated"


def site_params(site_dir: str | Path) -> dict | None:
    """The site's pipeline params, or None for an MSD-layout dataset folder; anything else is refused."""
    folder = Path(site_dir)
    if (folder / "params.yaml").is_file():
        return load_params(folder / "params.yaml")
    if (folder / DATASET_JSON).is_file():
        return None
    raise FileNotFoundError(f"site folder {site_dir} has neither params.yaml (a pipeline project: inbox, output_dir, "
                            f"deid_key_file) nor {DATASET_JSON} (a converted MSD-layout dataset); see README "
                            "'Federated training'")


def site_out(site_dir: str | Path) -> Path:
    """Where the site writes: its pipeline output folder, or ``outputs/`` in an MSD-layout site."""
    params = site_params(site_dir)
    return Layout.from_params(params).out if params is not None else Path(site_dir).resolve() / "outputs"


def dataset_version(folder: Path) -> str:
    """Content hash of an MSD-layout dataset: ``dataset.json``, ``imagesTr`` and ``labelsTr``."""
    parts = [sha256_file(folder / DATASET_JSON), tree_hash(folder / "imagesTr"), tree_hash(folder / "labelsTr")]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def prepare_site(site_dir: str | Path) -> SiteData:
    """The site's labelled training and test cases; a pipeline site first ingests, converts and assembles its
    inbox (unless unchanged since last time) and keeps its dataset's per-patient split, an MSD-layout site
    (one case per patient) holds out :data:`MSD_TEST_FRACTION` of its cases."""
    from medcore.data.datalist import load_datalist
    from medcore.engine.presets import split_cases

    name = site_name(site_dir)
    params = site_params(site_dir)
    if params is None:
        dataset_json = Path(site_dir).resolve() / DATASET_JSON
        version = dataset_version(dataset_json.parent)
        cases = datalist_cases(load_datalist(dataset_json))
        if len(cases) < 2:
            raise ValueError(f"site {name}: {len(cases)} labelled case(s) in {dataset_json}; a site needs at least "
                             "one training and one test case")
        train, test = split_cases(cases, MSD_TEST_FRACTION, TEST_SEED)
    else:
        dataset_json = assembled_dataset(name, params)
        version = read_json(Layout.from_params(params).out / "dataset_version.json")["dataset_hash"]
        train = datalist_cases(load_datalist(dataset_json))
        test = datalist_cases(load_datalist(dataset_json, section="test"))
        for part, cases in (("training", train), ("test", test)):
            if not cases:
                raise ValueError(f"site {name}: its dataset has no {part} patients ({dataset_json}); each patient "
                                 "goes to training or test by a keyed hash of its pseudonym, so the site needs more "
                                 "patients, or a dataset.test_fraction in its params.yaml that leaves both sides "
                                 "some")
    dataset = read_json(dataset_json)
    modality = str((dataset.get("modality") or {}).get("0", "unknown"))
    labels = {str(n): int(v) for v, n in dataset["labels"].items()}
    return SiteData(name, version, modality, labels, tuple(train), tuple(test), site_out(site_dir))


def datalist_cases(items: list[dict]) -> list[dict]:
    from medcore.data.datalist import case_id

    return [{"id": case_id(i), "image": i["image"], "label": i["label"]} for i in items]


def assembled_dataset(name: str, params: dict) -> Path:
    """Ingest, convert and assemble the site's inbox unless it is unchanged since the last time; the dataset.json."""
    from pipelines.steps.convert import convert_all
    from pipelines.steps.dataset import assemble_dataset
    from pipelines.steps.ingest import folder_signature, ingest_all

    layout = Layout.from_params(params)
    inbox = Path(resolve(params, params["source"]["dicom_dir"]) or "")
    manifest = Path(resolve(params, params["source"]["label_manifest"]) or "")
    signature = {"inbox": folder_signature(inbox) if inbox.is_dir() else None,
                 "labels": folder_signature(manifest.parent) if manifest.parent.is_dir() else None}
    marker = layout.out / "federated" / "prepared.json"
    dataset_json = layout.dataset_dir / DATASET_JSON
    if not (marker.is_file() and read_json(marker) == signature and dataset_json.is_file()):
        if signature["inbox"] is None:
            raise FileNotFoundError(f"site {name}: inbox {inbox} does not exist")
        ingest_all(params)
        convert_all(params)
        assemble_dataset(params)
        write_json(marker, signature)
    return dataset_json


def site_fingerprint(site: SiteData) -> dict:
    """medcore's own dataset fingerprint of the training cases: statistics only, no voxels, no case ids."""
    from medcore.engine.presets import fingerprint

    fp = fingerprint(list(site.train))
    return {"site": site.name, "dataset_hash": site.dataset_hash, "modality": site.modality, "labels": site.labels,
            **fp}


def cached_training(site: SiteData, plan: dict):
    """The training cases as ``CachedCases`` preprocessed as ``plan`` says (in the site's content-addressed
    cache); a case that cannot be preprocessed is left out with its reason."""
    from medcore.data.dataset import ItemError
    from medcore.engine.segmentation import CachedCases, case_dataset, preprocessing_configs

    dataset = case_dataset(list(site.train), preprocessing_configs(plan), site.cache_dir)
    usable, skipped = [], []
    for i, case in enumerate(site.train):
        try:
            dataset.prepared(i)
            usable.append(i)
        except ItemError as error:
            skipped.append({"id": case["id"], "reason": str(error)})
    if not usable:
        raise ValueError(f"site {site.name}: none of its {len(site.train)} training cases could be preprocessed")
    return CachedCases(dataset, usable, skipped)


class ProximalLoss(torch.nn.Module):
    """FedProx: ``loss + mu / 2 * ||w - w_global||^2`` over the model's parameters."""

    def __init__(self, loss: torch.nn.Module, model: torch.nn.Module, mu: float) -> None:
        super().__init__()
        self.loss, self.model, self.mu = loss, [model], float(mu)  # a list: not a registered submodule
        self.reference = [p.detach().clone() for p in model.parameters()]

    def forward(self, prediction, target) -> torch.Tensor:
        prox = sum(((p - r.to(p.device)) ** 2).sum() for p, r in zip(self.model[0].parameters(), self.reference))
        return self.loss(prediction, target) + 0.5 * self.mu * prox


@dataclass(frozen=True)
class LocalUpdate:
    """What local training produced: the new weights, the number of training cases and the mean loss."""

    weights: dict[str, torch.Tensor]
    num_examples: int
    train_loss: float


def new_model(plan: dict, weights: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    import medcore.networks.dynunet  # noqa: F401  (registers "dynunet")
    from medcore.networks import build_network

    model = build_network(plan["network"])
    if weights is not None:
        model.load_state_dict(weights)
    return model


OPTIMIZER_STATE = "optimizer.safetensors"  # in the site's work folder: its optimiser's moments, never sent


def saved_optimizer_state(path: Path, key: str) -> dict | None:
    """The optimiser state saved at ``path`` under ``key`` (a federation run and its plan), or None: none yet, one
    of another run or plan, or a damaged file (the round then starts its moments afresh)."""
    from medcore.engine.checkpoint import CheckpointError, load_checkpoint

    if not path.is_file():
        return None
    try:
        state = load_checkpoint(path)
    except (CheckpointError, OSError, ValueError) as error:
        logging.getLogger(__name__).warning("optimiser state %s not used, this round starts its moments afresh: %s",
                                            path, error)
        return None
    return state["optimizer"] if state.get("key") == key else None


def train_locally(site: SiteData, plan: dict, weights: dict[str, torch.Tensor], steps: int, lr: float,
                  proximal_mu: float = 0.0, seed: int = 0, state_key: str | None = None,
                  schedule: tuple[int, int] | None = None) -> LocalUpdate:
    """``steps`` optimiser steps of the medcore trainer from ``weights`` on the site's training cases.

    The learning rate is ``lr`` times the plan's schedule (warm-up, then poly decay) at each step; ``schedule``
    ``(first step, total steps)`` places these steps in the federation's whole run (default: they are the whole
    run), so the rounds together follow one schedule, as a single site's training does, and anneal to 0.
    With ``state_key`` (the federation run and its plan), the optimiser keeps its moments from this site's
    previous round in the same run, in the site's own work folder: they stay at the site, as its data do."""
    from medcore.engine.checkpoint import save_checkpoint
    from medcore.engine.data import EpochDataset
    from medcore.engine.segmentation import TrainingSample, training_transforms
    from medcore.engine.trainer import Trainer, TrainerConfig
    from medcore.losses import build_loss

    train = cached_training(site, plan)
    torch.manual_seed(seed)
    model = new_model(plan, weights)
    loss = build_loss(plan["loss"])
    if proximal_mu > 0:
        loss = ProximalLoss(loss, model, proximal_mu)
    first, total = schedule or (0, int(steps))
    config = TrainerConfig(max_epochs=1, batch_size=int(plan["batch_size"]),
                           samples_per_epoch=int(steps) * int(plan["batch_size"]), val_every=1,
                           optimizer={**plan["optimizer"], "lr": float(lr)},
                           schedule={**plan["schedule"], "total_steps": int(total)}, seed=seed, progress=False)
    augment = TrainingSample(training_transforms(plan))
    site.work_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="round-", dir=site.work_dir))
    try:
        trainer = Trainer(model, loss, EpochDataset(train, augment, seed=seed), run_dir, config)
        trainer.schedule_position = float(first)  # where this round's steps are in the federation's schedule
        state_file = site.work_dir / OPTIMIZER_STATE
        previous = saved_optimizer_state(state_file, state_key) if state_key else None
        if previous is not None:
            trainer.optimizer.load_state_dict(previous)
            for group in trainer.optimizer.param_groups:  # the saved base lr is last round's; this round's is lr
                group["lr"] = group["initial_lr"] = float(lr)
        trainer.fit(resume=False)
        if state_key:
            save_checkpoint({"key": state_key, "optimizer": trainer.optimizer.state_dict()}, state_file)
        record = trainer.history.records[-1] if trainer.history.records else {}
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return LocalUpdate(weights, len(train), float(record.get("train_loss", float("nan"))))


def save_plan_model(directory: Path, plan: dict, weights: dict[str, torch.Tensor], provenance: dict) -> Path:
    """``weights`` as a MODEL_DIR with the plan's preprocessing, inference settings and labels."""
    from medcore.engine.segmentation import preprocessing_configs
    from medcore.inferers.model_dir import save_model_dir

    return save_model_dir(directory, new_model(plan, weights), preprocessing=preprocessing_configs(plan),
                          inference=plan["inference"], labels=plan["labels"], provenance=provenance)


def test_case_dice(site: SiteData, model_dir: Path) -> tuple[list[float], list[dict]]:
    """The model in ``model_dir`` on the site's test cases, each predicted as ``medcore predict`` does (whole
    volume, the model directory's own preprocessing) and compared with its label: the mean foreground Dice
    per case, in the site's test order (NaN where it has none: an empty reference, or a case that cannot be
    read), and the per-class rows."""
    from medcore.inferers.model_dir import load_model_dir
    from pipelines.steps.evaluate import case_scores, measure_case

    labels = {n: v for n, v in site.labels.items() if v != 0}
    model, spec = load_model_dir(model_dir)
    per_case, rows = [], []
    for case in site.test:
        try:
            case_rows, _ = measure_case(model, spec, case, labels)
        except (OSError, ValueError):  # a bad file never takes down the evaluation: the case has no score
            case_rows = []
        rows += case_rows
        per_case.append(case_scores(case_rows).get(case["id"], float("nan")))
    return per_case, rows


def evaluate_locally(site: SiteData, model_dir: Path, champion_dir: Path | None = None) -> dict:
    """Numbers only: the model's Dice per class and their mean over the site's test cases, their count, and its
    per-case Dice (``case_dice``); with a champion, the champion's per-case Dice on the same cases in the same
    order (``champion_case_dice``), so the server can pair them without knowing which case is which."""
    from pipelines.steps.evaluate import summarise

    per_case, rows = test_case_dice(site, model_dir)
    mean, per_class, n = summarise(rows)
    out: dict = {"num-examples": n, "dice_mean": mean, **{f"dice_{k}": v for k, v in per_class.items()},
                 "case_dice": per_case}
    if champion_dir is not None:
        out["champion_case_dice"] = test_case_dice(site, champion_dir)[0]
    return out
