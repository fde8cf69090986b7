"""``medcore train --config FILE --run-dir DIR``: one process, or N under ``torchrun --nproc_per_node N``.

Prints the run's ``summary.json`` path on success; the JSON holds the outcome (metrics, MODEL_DIR).
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="JSON or YAML config (see medcore.engine.config.DEFAULTS)")
    parser.add_argument("--run-dir", required=True, help="output folder; an existing run there is resumed")
    parser.add_argument("--preset", help="override the config's preset (hippocampus, synthetic_ct)")
    parser.add_argument("--device", help="override the config's device (auto, cpu, cuda)")
    parser.add_argument("--minutes", type=float, help="override the config's time_budget_minutes")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    from medcore.engine.config import load_config
    from medcore.engine.distributed import shutdown_distributed
    from medcore.engine.run import run_training

    try:
        config = load_config(args.config)
    except (OSError, ValueError) as error:
        print(f"medcore train: {error}", file=sys.stderr)
        return 2
    if args.preset:
        config["preset"] = args.preset
    if args.device:
        config["device"] = args.device
    if args.minutes is not None:
        config["time_budget_minutes"] = args.minutes
    try:
        summary = run_training(config, args.run_dir, progress=not args.no_progress)
    except (OSError, ValueError) as error:
        print(f"medcore train: {error}", file=sys.stderr)
        return 1
    finally:
        shutdown_distributed()
    if summary.get("model_dir"):
        print(json.dumps({"summary": f"{summary['run_dir']}/summary.json", "model_dir": summary["model_dir"],
                          "best_score": summary["best_score"]}))
    return 0
