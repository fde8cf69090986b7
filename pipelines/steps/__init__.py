"""One plain function per stage. Dagster assets and `python -m pipelines STAGE` (DVC) both call these.

Stages: ingest (header index per study), convert (NIfTI + labels per study), dataset (fan-in, MSD
layout), cache (medcore preprocessing cache), train (torchrun), evaluate, register (MLflow).
"""
