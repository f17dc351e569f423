#!/usr/bin/env bash
# Prometheus and Alertmanager on loopback with the committed configuration (`make monitor`);
# both stop on Ctrl-C. The API (`make serve`) and the exporter (`rakuten-classifier exporter`)
# are started separately: Prometheus shows them down until they are.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in prometheus prometheus-alertmanager; do
    command -v "$tool" > /dev/null || {
        echo "$tool is missing: apt-get install prometheus prometheus-alertmanager" >&2
        exit 1
    }
done
mkdir -p data/monitoring
trap 'kill 0' EXIT INT TERM
prometheus-alertmanager --config.file=monitoring/alertmanager/alertmanager.yml \
    --storage.path=data/monitoring/alertmanager --web.listen-address=127.0.0.1:9093 \
    --cluster.listen-address= &
prometheus --config.file=monitoring/prometheus/prometheus.yml \
    --storage.tsdb.path=data/monitoring/prometheus --web.listen-address=127.0.0.1:9090 &
echo "Prometheus http://127.0.0.1:9090, Alertmanager http://127.0.0.1:9093 (Ctrl-C stops)"
wait
