"""The Grafana dashboards, as code (grafana-foundation-sdk), written to dashboards/*.json, which
Grafana loads through provisioning/dashboards/rakuten.yml:

- rakuten-api: traffic, refusals, latency, the prediction store;
- rakuten-model: the served models, what they predict, drift, and the online comparison of the
  champion and the challenger on the products with feedback.

Every query reads the Prometheus of monitoring/prometheus (its recording rules included);
tests/test_monitoring.py runs each one on a live Prometheus and checks the JSON here is what
this script writes.

    .venv/bin/python monitoring/grafana/build_dashboards.py          # rewrite the JSON
    .venv/bin/python monitoring/grafana/build_dashboards.py --check  # exit 1 if stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueTextMode,
    LegendDisplayMode,
    LegendPlacement,
)
from grafana_foundation_sdk.models.dashboard import DataSourceRef, GridPos, Threshold
from panels import API_ROWS, MODEL_ROWS, Chart

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"
# The uid provisioning/datasources/prometheus.yml gives the Prometheus data source.
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")
WIDTH = 24


def _targets(chart: Chart) -> list[prometheus.Dataquery]:
    return [
        prometheus.Dataquery().expr(q.expr).legend_format(q.legend or "__auto").ref_id(chr(65 + i))
        for i, q in enumerate(chart.queries)
    ]


def _panel(chart: Chart, x: int, y: int) -> timeseries.Panel | stat.Panel:
    height = 4 if chart.kind == "stat" else 8
    panel = timeseries.Panel() if chart.kind == "timeseries" else stat.Panel()
    panel = (
        panel.title(chart.title)
        .description(chart.description)
        .datasource(DATASOURCE)
        .unit(chart.unit)
        .grid_pos(GridPos(h=height, w=chart.width, x=x, y=y))
        .thresholds(
            dashboard.ThresholdsConfig().steps(
                [Threshold(value=value, color=colour) for value, colour in chart.thresholds]
            )
        )
    )
    if chart.low is not None:
        panel = panel.min(chart.low)
    if chart.high is not None:
        panel = panel.max(chart.high)
    if chart.kind == "timeseries":
        legend = common.VizLegendOptions().display_mode(LegendDisplayMode.LIST)
        panel = panel.legend(legend.placement(LegendPlacement.BOTTOM).show_legend(True))
    else:
        reduce = common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)
        panel = panel.reduce_options(reduce).text_mode(BigValueTextMode.VALUE_AND_NAME)
    for target in _targets(chart):
        panel = panel.with_target(target)
    return panel


def build(uid: str, title: str, rows: dict[str, list[Chart]]) -> dict:
    """A dashboard of rows of charts, laid out left to right, top to bottom."""
    board = (
        dashboard.Dashboard(title)
        .uid(uid)
        .tags(["rakuten"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .editable()
    )
    y = 0
    for row_title, charts in rows.items():
        board = board.with_row(dashboard.Row(row_title).grid_pos(GridPos(h=1, w=WIDTH, y=y)))
        y += 1
        x, row_height = 0, 0
        for chart in charts:
            if x + chart.width > WIDTH:
                x, y, row_height = 0, y + row_height, 0
            board = board.with_panel(_panel(chart, x, y))
            height = 4 if chart.kind == "stat" else 8
            x, row_height = x + chart.width, max(row_height, height)
        y += row_height
    return json.loads(JSONEncoder(sort_keys=True, indent=2).encode(board.build()))


DASHBOARDS = {
    "rakuten-api.json": ("rakuten-api", "Rakuten classifier: API", API_ROWS),
    "rakuten-model.json": ("rakuten-model", "Rakuten classifier: models and drift", MODEL_ROWS),
}


def rendered() -> dict[str, str]:
    """Each dashboard file's text."""
    return {
        name: json.dumps(build(*spec), indent=2, sort_keys=True) + "\n"
        for name, spec in DASHBOARDS.items()
    }


def main(argv: list[str]) -> int:
    stale = []
    for name, text in rendered().items():
        path = DASHBOARDS_DIR / name
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        partial.write_text(text)
        partial.replace(path)
        print(f"wrote {path}")
    if stale:
        print(f"stale: {', '.join(stale)}; run {Path(__file__).name}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
