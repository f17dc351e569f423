# Two commands on a fresh machine: `make run` and `make test`. Everything else is optional.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export KERAS_BACKEND := tensorflow
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup run test test-fast lint lock bench-memory bench-dvc mlflow-env mlflow lock-mlflow
setup: $(STAMP)

# The virtual environment is rebuilt only when the lock file or the project metadata change.
$(STAMP): requirements.lock pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	# Byte-compiled once here: imports (TensorFlow's above all) then start in seconds even
	# where PYTHONDONTWRITEBYTECODE keeps Python from caching them.
	$(BIN)/uv pip install --python $(PY) --quiet --compile-bytecode -r requirements.lock
	$(BIN)/uv pip install --python $(PY) --quiet --no-deps -e .
	touch $@

run: setup
	$(BIN)/dvc repro
	$(BIN)/rakuten-classifier metrics

# The tests start a real MLflow server from its environment.
test: setup mlflow-env
	$(BIN)/pytest

# The tests that need neither the pipeline run nor a server nor a long training: about a minute.
test-fast: setup
	$(BIN)/pytest -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The MLflow tracking and registry server runs from its own environment: full mlflow pins
# pyarrow<26, which the project's cannot share (the project itself uses mlflow-skinny).
MLFLOW_VENV := .venv-mlflow
MLFLOW_STAMP := $(MLFLOW_VENV)/.installed
$(MLFLOW_STAMP): deploy/mlflow/requirements.lock | $(STAMP)
	python3 -m venv $(MLFLOW_VENV)
	$(BIN)/uv pip install --python $(MLFLOW_VENV)/bin/python --quiet -r deploy/mlflow/requirements.lock
	touch $@

mlflow-env: $(MLFLOW_STAMP)

# http://127.0.0.1:5000, SQLite and artifacts under mlruns/ (docs/registry.md for a team's
# PostgreSQL and S3); Ctrl+C stops it.
mlflow: mlflow-env
	deploy/mlflow/serve.sh

lock-mlflow: setup
	$(BIN)/uv pip compile deploy/mlflow/requirements.in --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 -o deploy/mlflow/requirements.lock

# Re-pin every dependency after editing pyproject.toml.
lock: setup
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra vectors --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 -o requirements.lock

.PHONY: serve bench-api
# The prediction API on RAKUTEN_API_HOST:RAKUTEN_API_PORT (default 127.0.0.1:8000), serving
# RAKUTEN_API_BUNDLE (default models/bundle, built by `make run`); settings from .env
# (see .env.example and docs/api.md).
serve: setup
	$(BIN)/rakuten-classifier serve

# Load test of the API on loopback: a server of its own on a free port, concurrent clients,
# latency percentiles and throughput. E.g. BENCH_API_ARGS="--clients 16 --duration 30".
bench-api: setup
	$(PY) bench/api_load.py $(BENCH_API_ARGS)

.PHONY: bench-memory bench-dvc
# Peak memory of import_raw, make_dataset and the photo pipeline on a synthetic copy of the
# full data set's size (ROWS labelled products; PHOTOS: labelled photos per image run).
ROWS ?= 84916
PHOTOS ?= --photos 1000 --photos 3000
bench-memory: setup
	$(PY) bench/memory.py --rows $(ROWS) $(PHOTOS)

# DVC with the full data set's photo count: one images.zip versus a folder of ~99k files.
bench-dvc: setup
	$(PY) bench/dvc_tracking.py --rows $(ROWS)

.PHONY: report bench
# Compare the workspace (or TARGET) with a git revision or DVC experiment: Markdown + PNGs +
# a self-contained HTML file in reports/, e.g. `make report BASELINE=main`.
BASELINE ?= HEAD
TARGET ?= workspace
report: setup
	$(BIN)/rakuten-classifier report --baseline $(BASELINE) --target $(TARGET)

# Pipeline time and memory per stage and prediction throughput on the sample, compared with
# the previous run on this machine (kept in .bench/). BENCH_ARGS="--bundle models/bundle"
# measures the prediction throughput of an existing bundle only.
bench: setup
	$(PY) bench/pipeline.py $(BENCH_ARGS)
