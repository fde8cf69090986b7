"""Stage ``evaluate``: predict the held-out cases with the trained MODEL_DIR and measure them.

Writes ``evaluation/per_case.csv`` (one row per case and class), ``summary.json`` (the numbers the
registry compares) and plots: per-class Dice distribution, training curves, overlays of the best
and worst case.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import numpy as np

from medcore.utils.atomic import atomic_dir, sweep_tmp
from pipelines.steps.layout import Layout, read_json, sha256_file
from pipelines.steps.results import Evaluation, TrainedModel, load, save

PER_CASE = "per_case.csv"


def evaluation_cases(params: dict) -> list[dict]:
    """The test patients' cases of the dataset version (never seen in training): ``[{id, image, label}]``."""
    from medcore.data.datalist import case_id, load_datalist

    dataset = Layout.from_params(params).dataset_dir / "dataset.json"
    items = load_datalist(dataset, section="test")
    if not items:
        raise ValueError(f"{dataset}: no test patients yet; the dataset needs at least two patients (one is held "
                         "out for testing, by a keyed hash of its pseudonym)")
    return [{"id": case_id(i), "image": i["image"], "label": i["label"]} for i in items]


def evaluation_set_hash(cases: list[dict]) -> str:
    h = hashlib.sha256()
    for c in sorted(cases, key=lambda c: c["id"]):
        h.update(f"{c['id']}:{sha256_file(Path(c['image']))}:{sha256_file(Path(c['label']))}\n".encode())
    return h.hexdigest()[:20]


def foreground_labels(params: dict) -> dict[str, int]:
    names = read_json(Layout.from_params(params).dataset_dir / "dataset.json")["labels"]
    return {v: int(k) for k, v in names.items() if int(k) != 0}


def measure_model(model_dir: Path, cases: list[dict], labels: dict[str, int]) -> tuple[list[dict], dict]:
    """Per-case rows and predictions (``{id: (image, pred, ref) arrays}``) of the model in ``model_dir``."""
    from tqdm.auto import tqdm

    from medcore.inferers.model_dir import load_model_dir

    model, spec = load_model_dir(model_dir)
    rows, volumes = [], {}
    for case in tqdm(cases, desc="evaluate", unit="case"):
        case_rows, volumes[case["id"]] = measure_case(model, spec, case, labels)
        rows += case_rows
    return rows, volumes


def measure_case(model, spec, case: dict, labels: dict[str, int]) -> tuple[list[dict], tuple]:
    """One case predicted as ``medcore predict`` does (whole volume, the model's own preprocessing, inverted
    onto the image's grid) and measured against its label: its rows (one per class) and ``(image, pred, ref)``."""
    from medcore.inferers.predict import predict_volume
    from medcore.io import load_image
    from medcore.metrics.evaluate import case_metrics

    image, ref = load_image(case["image"]), load_image(case["label"])
    pred = predict_volume(model, spec, image, device="cpu")
    p = pred.data[0].numpy().astype(np.int64)
    r = np.rint(ref.data[0].numpy()).astype(np.int64)
    metrics = case_metrics(p, r, spacing=image.spacing, labels=labels)
    rows = [{"case": case["id"], "class": name, **{k: float(v) for k, v in values.items()}}
            for name, values in metrics.items()]
    return rows, (image.data[0].numpy(), p, r)


def summarise(rows: list[dict]) -> tuple[float, dict[str, float], int]:
    """Mean foreground Dice, mean Dice per class (NaN for empty references left out) and the case count."""
    per_class: dict[str, list[float]] = {}
    for row in rows:
        if not math.isnan(row["dice"]):
            per_class.setdefault(row["class"], []).append(row["dice"])
    class_means = {k: float(np.mean(v)) for k, v in sorted(per_class.items())}
    mean = float(np.mean(list(class_means.values()))) if class_means else 0.0
    return mean, class_means, len({r["case"] for r in rows})


def case_scores(rows: list[dict]) -> dict[str, float]:
    scores: dict[str, list[float]] = {}
    for row in rows:
        if not math.isnan(row["dice"]):
            scores.setdefault(row["case"], []).append(row["dice"])
    return {k: float(np.mean(v)) for k, v in scores.items()}


def _plots(out: Path, rows: list[dict], volumes: dict, curves: Path | None) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    written = {}
    classes = sorted({r["class"] for r in rows})
    fig = Figure(figsize=(1.6 * max(3, len(classes)) + 1, 3.5), dpi=90)
    ax = fig.subplots()
    data = [[r["dice"] for r in rows if r["class"] == c and not math.isnan(r["dice"])] for c in classes]
    ax.boxplot([d if d else [float("nan")] for d in data], showmeans=True)
    ax.set_xticks(range(1, len(classes) + 1), classes, rotation=20)
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.set_title("per-class Dice over evaluation cases")
    fig.tight_layout()
    fig.savefig(out / "dice_distribution.png")
    written["dice_distribution"] = "dice_distribution.png"
    if curves is not None and curves.is_file():
        shutil.copyfile(curves, out / "training_curves.png")
        written["training_curves"] = "training_curves.png"
    scores = case_scores(rows)
    if scores:
        ranked = sorted(scores, key=lambda case: scores[case])
        for tag, case in (("worst", ranked[0]), ("best", ranked[-1])):
            image, pred, ref = volumes[case]
            z = int(np.argmax((ref > 0).sum(axis=(0, 1)))) if ref.any() else image.shape[2] // 2
            fig = Figure(figsize=(8, 4), dpi=90)
            for ax, lab, title in zip(fig.subplots(1, 2), (ref, pred), ("reference", "prediction")):
                ax.imshow(image[:, :, z].T, cmap="gray", origin="lower")
                masked = np.ma.masked_equal(lab[:, :, z].T, 0)
                ax.imshow(masked, cmap="tab10", alpha=0.5, origin="lower", vmin=0, vmax=9)
                ax.set_title(f"{title} (slice {z})")
                ax.axis("off")
            fig.suptitle(f"{tag} case: mean Dice {scores[case]:.3f}")
            fig.savefig(out / f"overlay_{tag}.png")
            written[f"overlay_{tag}"] = f"overlay_{tag}.png"
    return written


def evaluate(params: dict) -> Evaluation:
    """Evaluate the latest trained model; write ``evaluation/`` atomically and return the summary."""
    import pandas as pd

    layout = Layout.from_params(params)
    latest = load(layout.latest_json, TrainedModel)
    cases = evaluation_cases(params)
    rows, volumes = measure_model(layout.out / latest.model_dir, cases, foreground_labels(params))
    mean, per_class, n = summarise(rows)
    sweep_tmp(layout.out)
    with atomic_dir(layout.evaluation_dir) as tmp:
        pd.DataFrame(rows).to_csv(tmp / PER_CASE, index=False)
        plots = _plots(tmp, rows, volumes, layout.out / latest.run_dir / "curves.png")
        history = layout.out / latest.run_dir / "history.csv"
        if history.is_file():  # the training curves as data, for `dvc plots show`
            shutil.copyfile(history, tmp / "history.csv")
        summary = Evaluation(mean, per_class, n, evaluation_set_hash(cases), latest.run_key, plots)
        save(tmp / "summary.json", summary)
    return summary
