#!/usr/bin/env bash
# The MLflow tracking and registry server (`make mlflow`), from its own environment
# (.venv-mlflow: full mlflow pins pyarrow<26, which the project's environment cannot share).
#
# Defaults: http://127.0.0.1:5000, a SQLite backend and the artifacts under mlruns/ (both
# git-ignored). For a team, a PostgreSQL backend and an S3 artifact root (the DVC remote's
# bucket, say), credentials from the environment, never from git:
#   MLFLOW_BACKEND_STORE_URI=postgresql+psycopg://mlflow:...@db.example/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://my-bucket/mlflow make mlflow
#
# One worker and no job execution: it then starts in ~30 s instead of ~110 s and leaves no
# consumer process behind. The server runs in a process group of its own, stopped as a whole.
set -euo pipefail
cd "$(dirname "$0")/../.."
HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
BACKEND="${MLFLOW_BACKEND_STORE_URI:-sqlite:///mlruns/mlflow.db}"
ARTIFACTS="${MLFLOW_ARTIFACTS_DESTINATION:-mlruns/artifacts}"
MLFLOW="${MLFLOW_BIN:-.venv-mlflow/bin/mlflow}"
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
mkdir -p mlruns
if [[ ! -x "$MLFLOW" ]]; then
    echo "error: $MLFLOW not found: run \`make mlflow-env\` (or \`make mlflow\`)" >&2
    exit 2
fi
echo "MLflow on http://$HOST:$PORT (backend ${BACKEND%%:*}, artifacts $ARTIFACTS); Ctrl+C stops it" >&2
setsid "$MLFLOW" server --host "$HOST" --port "$PORT" --workers 1 \
    --backend-store-uri "$BACKEND" --artifacts-destination "$ARTIFACTS" &
SERVER=$!
trap 'kill -TERM -- "-$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' INT TERM EXIT
wait "$SERVER"
