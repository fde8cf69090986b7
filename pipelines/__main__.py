"""``python -m pipelines run --params FILE``, ``python -m pipelines demo`` and ``python -m pipelines STAGE``.

``run`` materialises the whole Dagster graph in-process against ``dagster_home/`` on whatever is in the
inbox (ingestion per study, then retraining when the dataset or the parameters changed, or ``--force``).
``demo`` writes synthetic studies into the inbox, then runs. Stages (what dvc.yaml calls): ingest,
convert, dataset, cache, train, evaluate, register.
``recover`` marks FAILED the Dagster runs left STARTED by a killed process (``demo`` does it first too).
``pacs`` runs a private Orthanc PACS until Ctrl-C; ``infer --pacs URL`` segments, with the current champion,
every PACS study it has not segmented yet (the ``inference`` job, in-process) and prints a line per study.
``federate --sites DIR ...`` trains one model across sites with Flower (``pipelines/federated``).
"""

from __future__ import annotations

import argparse
import json
import sys

STAGES = ("ingest", "convert", "dataset", "cache", "train", "evaluate", "register")


def run_stage(stage: str, params: dict) -> object:
    """Run one stage's step function on ``params``; returns its typed result(s)."""
    from pipelines.steps import cache, convert, dataset, evaluate, ingest, register, train

    stages = {"ingest": ingest.ingest_all, "convert": convert.convert_all, "dataset": dataset.assemble_dataset,
              "cache": cache.build_preprocessed_cache, "train": train.train, "evaluate": evaluate.evaluate,
              "register": lambda p: register.register(p, run_tags={"runner": "dvc"})}
    if stage not in stages:
        raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}, demo or recover")
    return stages[stage](params)


def main(argv: list[str] | None = None) -> int:
    from pipelines.params import load_params
    from pipelines.steps.results import to_json

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["federate"]:
        from pipelines.federated.cli import main as federate_main

        return federate_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=(*STAGES, "run", "demo", "recover", "infer", "pacs"))
    parser.add_argument("--force", action="store_true", help="run: train even when nothing changed")
    parser.add_argument("--pacs", default=None, help="infer: the PACS's DICOMweb URL (default: params pacs.url)")
    parser.add_argument("--params", default=None, help="params.yaml (default: the project's)")
    parser.add_argument(
        "--output-dir", default=None, help="override params output_dir (the dataset then goes to OUTPUT_DIR/dataset)"
    )
    args = parser.parse_args(argv)
    try:
        if args.stage == "recover":
            from pipelines.demo import run_recover

            return run_recover()
        if args.stage == "pacs":
            from pipelines.orthanc import serve_forever

            return serve_forever()
        params = load_params(args.params, overrides={"output_dir": args.output_dir, "dataset_dir": None}
                             if args.output_dir else None)
        if args.stage in ("run", "demo"):
            from pipelines.demo import run_demo, run_inbox

            return run_demo(params) if args.stage == "demo" else run_inbox(params, force=args.force)
        if args.stage == "infer":
            from pipelines.infer import run_infer

            return run_infer(params, args.pacs)
        result = run_stage(args.stage, params)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"pipelines {args.stage}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(to_json(result), indent=1)[:4000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
