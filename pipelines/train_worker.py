"""What each torchrun process runs: medcore training; rank 0 alone reports to Dagster through Pipes.

Only rank 0 opens Pipes (several ranks reporting would fail the run with "Multiple materialize
results"). Rank 0 streams each finished epoch from the run's ``history.json`` into the Dagster log.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path


def _follow_history(run_dir: Path, log, stop: threading.Event, every: float = 1.0) -> None:
    seen = 0
    path = run_dir / "history.json"
    while True:
        try:
            records = json.loads(path.read_text()) if path.is_file() else []
        except (OSError, ValueError):
            records = []
        for record in records[seen:]:
            shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
            log.info(f"epoch finished: {shown}")
        seen = max(seen, len(records))
        if stop.is_set():
            return
        stop.wait(every)


def _train(config: dict, run_dir: Path) -> dict:
    from medcore.engine.run import run_training

    return run_training(config, run_dir, progress=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--run-dir", required=True)
    args = parser.parse_args(argv)
    config = json.loads(Path(args.config).read_text())
    run_dir = Path(args.run_dir)
    rank = int(os.environ.get("RANK", "0"))
    try:
        if rank == 0 and os.environ.get("DAGSTER_PIPES_CONTEXT"):
            from dagster_pipes import open_dagster_pipes

            with open_dagster_pipes() as pipes:
                pipes.log.info(f"training started: {os.environ.get('WORLD_SIZE', '1')} process(es)")
                stop = threading.Event()
                follower = threading.Thread(target=_follow_history, args=(run_dir, pipes.log, stop), daemon=True)
                follower.start()
                t0 = time.perf_counter()
                try:
                    summary = _train(config, run_dir)
                finally:
                    stop.set()
                    follower.join(timeout=10)
                pipes.report_asset_materialization(metadata={
                    "best_score": {"raw_value": float(summary.get("best_score") or 0.0), "type": "float"},
                    "best_epoch": {"raw_value": int(summary.get("best_epoch") or 0), "type": "int"},
                    "world_size": {"raw_value": int(os.environ.get("WORLD_SIZE", "1")), "type": "int"},
                    "train_seconds": {"raw_value": round(time.perf_counter() - t0, 2), "type": "float"},
                    "run_key": {"raw_value": run_dir.name, "type": "text"},
                })
        else:
            _train(config, run_dir)
    finally:
        from medcore.engine.distributed import shutdown_distributed

        shutdown_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
