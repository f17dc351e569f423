#!/bin/sh
# The MLflow server in its container. The backend store's URI holds a password: it is read
# from the file MLFLOW_BACKEND_STORE_URI_FILE names (a compose or Kubernetes secret), so it
# is never in the environment that `docker inspect` shows.
set -eu
if [ -n "${MLFLOW_BACKEND_STORE_URI_FILE:-}" ]; then
    MLFLOW_BACKEND_STORE_URI="$(cat "$MLFLOW_BACKEND_STORE_URI_FILE")"
    export MLFLOW_BACKEND_STORE_URI
fi
exec mlflow server --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" --workers 1 \
    --backend-store-uri "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI(_FILE)}" \
    --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION}"
