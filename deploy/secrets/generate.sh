#!/usr/bin/env bash
# The secrets of compose.yaml, generated once into deploy/secrets/ (git-ignored, mode 600):
# random passwords, the URLs that embed them, the API's signing secret and its first user
# (admin, every role; the password is printed once, here). Existing files are kept, so a
# rerun never changes a running stack's passwords. Needs the project's environment
# (`make setup`) for the user's bcrypt hash.
set -euo pipefail
cd "$(dirname "$0")"
umask 077
BIN="${RAKUTEN_VENV:-../../.venv}/bin"
random() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }
keep() { [[ -s "$1" ]] || printf '%s\n' "$2" > "$1"; }

keep postgres_password "$(random)"
keep s3_access_key "rakuten-$(python3 -c 'import secrets; print(secrets.token_hex(6))')"
keep s3_secret_key "$(random)"
keep rakuten_api_secret "$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
keep grafana_admin_password "$(random)"
DB_PASSWORD="$(cat postgres_password)"
keep rakuten_api_database_url "postgresql+psycopg://rakuten:${DB_PASSWORD}@postgres:5432/rakuten"
keep mlflow_backend_store_uri "postgresql+psycopg://rakuten:${DB_PASSWORD}@postgres:5432/mlflow"
keep airflow_database_url "postgresql+psycopg://rakuten:${DB_PASSWORD}@postgres:5432/airflow"
keep s3_credentials "$(printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s' \
    "$(cat s3_access_key)" "$(cat s3_secret_key)")"
if [[ ! -s api_users ]]; then
    PASSWORD="$(random)"
    printf '%s\n' "$PASSWORD" | "$BIN/python" -c 'import sys
from rakuten_classifier.serve.security import hash_password
print(f"admin:{hash_password(sys.stdin.readline().strip())}:predict+reviewer+admin")' \
        > api_users
    echo "API user admin, password (shown once): $PASSWORD" >&2
fi
echo "secrets in $(pwd)" >&2
