"""Metrics history: one record per epoch, written as CSV and JSON, and drawn as PNG training curves."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from medcore.utils.atomic import atomic_path, atomic_write_text


class MetricsHistory:
    """An append-only list of ``{"epoch": ..., name: value}`` records."""

    def __init__(self, records: list[dict] | None = None) -> None:
        self.records: list[dict] = [dict(r) for r in records or []]

    def append(self, record: dict) -> None:
        self.records.append({k: (float(v) if isinstance(v, (int, float)) and k != "epoch" else v)
                             for k, v in record.items()})

    def columns(self) -> list[str]:
        cols: list[str] = []
        for r in self.records:
            cols.extend(k for k in r if k not in cols)
        return cols

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns(), lineterminator="\n")
        writer.writeheader()
        for r in self.records:
            writer.writerow(r)
        return buf.getvalue()

    def write(self, directory: str | Path, plot: bool = True) -> None:
        """``history.csv``, ``history.json`` and (if ``plot``) ``curves.png`` in ``directory``, atomically."""
        directory = Path(directory)
        atomic_write_text(directory / "history.csv", self.to_csv())
        atomic_write_text(directory / "history.json", json.dumps(self.records, indent=1) + "\n")
        if plot and self.records:
            plot_curves(self.records, directory / "curves.png")


def plot_curves(records: list[dict], path: str | Path) -> None:
    """Loss curves on the left, validation metrics on the right, against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    ax_loss, ax_metric = fig.subplots(1, 2)
    epochs_of = lambda key: [(r["epoch"], r[key]) for r in records  # noqa: E731
                             if isinstance(r.get(key), float) and math.isfinite(r[key])]
    keys = [k for k in {k: None for r in records for k in r} if k != "epoch"]
    for key in keys:
        points = epochs_of(key)
        if not points:
            continue
        ax = ax_loss if "loss" in key else ax_metric if key.startswith("val_") else None
        if ax is not None:
            ax.plot(*zip(*points), marker="." if len(points) < 50 else None, label=key)
    for ax, title in ((ax_loss, "loss"), (ax_metric, "validation")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
