# syntax=docker/dockerfile:1
# The MLflow tracking and registry server from its own lock (deploy/mlflow/requirements.lock:
# full mlflow pins pyarrow<26, which the project's environment cannot share). The backend store
# (PostgreSQL) and the artifact destination (S3) come from the environment:
# MLFLOW_BACKEND_STORE_URI, MLFLOW_ARTIFACTS_DESTINATION, MLFLOW_S3_ENDPOINT_URL, AWS_*.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 UV_NO_CACHE=1
RUN pip install uv==0.13.9 && python -m venv /opt/mlflow
COPY deploy/mlflow/requirements.lock /tmp/requirements.lock
RUN uv pip install --python /opt/mlflow/bin/python --compile-bytecode -r /tmp/requirements.lock

FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin mlflow
COPY --from=build /opt/mlflow /opt/mlflow
COPY --chmod=755 deploy/docker/mlflow-server.sh /usr/local/bin/mlflow-server
# One worker and no job execution: the server starts in ~30 s instead of ~110 s and leaves
# no consumer process behind.
ENV PATH=/opt/mlflow/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=1 \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
USER 10001
WORKDIR /home/mlflow
EXPOSE 5000
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
CMD ["mlflow-server"]
