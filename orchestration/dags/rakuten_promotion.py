"""Promotion of the challenger on online evidence (docs/monitoring.md, "Retraining").

Hourly: when the registry has a challenger and the prediction store holds enough products with
feedback that both the champion and the challenger (in shadow mode) answered, run the promotion
gate on that paired evidence (`rakuten-classifier promote --evidence online`). Too little
evidence or a refusal skips the run; a promotion moves the champion alias, which the API picks
up at its next alias check without a restart.

Like rakuten_retraining, it runs the project's own command from the project's environment.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pendulum
from airflow.sdk import dag, task

PROJECT = Path(os.environ.get("RAKUTEN_PROJECT_DIR", Path(__file__).resolve().parents[2]))
BIN = Path(os.environ.get("RAKUTEN_VENV", PROJECT / ".venv")) / "bin"
SKIPPED = 99


@dag(
    dag_id="rakuten_promotion",
    schedule="@hourly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["rakuten", "promotion"],
    doc_md=__doc__,
)
def rakuten_promotion() -> None:
    @task.bash(cwd=str(PROJECT), append_env=True, skip_on_exit_code=SKIPPED)
    def promote_on_online_evidence() -> str:
        cli = shlex.quote(str(BIN / "rakuten-classifier"))
        # No challenger: exit 2 from promote; a refusal (or too few products): 99, skipped.
        return (
            f"{cli} registry list | grep -q challenger || "
            f"{{ echo 'no challenger'; exit {SKIPPED}; }}; "
            f"{cli} promote --evidence online --refused-exit-code {SKIPPED}"
        )

    promote_on_online_evidence()


rakuten_promotion()
