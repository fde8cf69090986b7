# Two commands for a fresh machine: `make demo` (the main job, end to end on synthetic DICOM)
# and `make test` (the test suite). Both create or reuse the project's virtual environment.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# DVC pins antlr4 4.9 through hydra while Dagster needs 4.13, so DVC gets its own tool venv.
DVC_VENV ?= .venv-dvc
DVC := $(DVC_VENV)/bin/dvc

.PHONY: demo test install dvc-tool bench-tools clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU PyTorch from the wheel on disk: never let a plain `torch` requirement pull a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,pipelines,scale,federated]'
	touch $@

dvc-tool: $(DVC_VENV)/.installed

$(DVC_VENV)/.installed:
	test -x $(DVC_VENV)/bin/python || $(PYTHON) -m venv $(DVC_VENV)
	$(DVC_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DVC_VENV)/bin/python -m pip install --quiet 'dvc>=3.50,<4'
	touch $@

# nnU-Net v2, the benchmarks' racer, in its own environment: its timm needs torchvision, whose compiled ops
# do not load beside the CPU torch, and MONAI must keep importing in .venv (benchmarks/nnunet_race.py).
NNUNET_VENV ?= .venv-nnunet
bench-tools: $(NNUNET_VENV)/.installed

$(NNUNET_VENV)/.installed:
	test -x $(NNUNET_VENV)/bin/python || $(PYTHON) -m venv $(NNUNET_VENV)
	$(NNUNET_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(NNUNET_VENV)/bin/python -m pip install --quiet torch==2.13.0 torchvision==0.28.0
	$(NNUNET_VENV)/bin/python -m pip install --quiet 'nnunetv2==2.8.1'
	touch $@

demo: install dvc-tool
	MEDCORE_DVC=$(abspath $(DVC)) $(PY) -m pipelines demo

test: install dvc-tool
	MEDCORE_DVC=$(abspath $(DVC)) $(PY) -m pytest -q --timeout=900 --durations=15

clean:
	rm -rf outputs mlruns mlartifacts mlflow.db .pytest_cache data/inbox data/dataset data/dataset.dvc
	find dagster_home -mindepth 1 ! -name dagster.yaml -exec rm -rf {} +
