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
    """Three panels against the epoch: losses, validation Dice-like scores, other validation metrics."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4), dpi=100)
    panels = dict(zip(("loss", "validation score", "validation distance (mm)"), fig.subplots(1, 3)))
    keys = [k for k in {k: None for r in records for k in r} if k != "epoch"]
    for key in keys:
        points = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), float) and math.isfinite(r[key])]
        if not points:
            continue
        if "loss" in key:
            ax = panels["loss"]
        elif key.startswith("val_") and "dice" in key:
            ax = panels["validation score"]
        elif key.startswith("val_"):
            ax = panels["validation distance (mm)"]
        else:
            continue
        ax.plot(*zip(*points), marker="." if len(points) < 50 else None, label=key)
    for title, ax in panels.items():
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
