"""Automatic retraining of the Rakuten product type classifier (docs/monitoring.md,
"Retraining").

Daily, and on demand (`airflow dags trigger rakuten_retraining --conf '{"force": true}'`):

1. check      whether to retrain: the champion's latest traffic drifted, or enough feedback
              arrived since the last batch (params.yaml `retrain:`); otherwise the run stops
              here, its other tasks skipped;
2. export     the products with new feedback as a batch under data/feedback, `dvc add`ed;
3. reproduce  `dvc repro`: make_dataset adds the batches to the training split (the test split
              stays the same, so metrics stay comparable) and every later stage reruns;
4. register   the new bundle in the MLflow registry as the challenger;
5. promote    through the promotion gate on held-out evidence (the same test split); a refusal
              leaves the champion in place and skips this task, it is not a failure. With
              the `evidence` param "online" it is skipped: the challenger is served in shadow
              and the rakuten_promotion DAG decides once the store has the paired evidence;
6. publish    commit dvc.lock and the batch's .dvc file, `dvc push` the data and models;
7. report     a Markdown summary of the run, whatever happened before.

Each task runs the project's own commands (its .venv's `rakuten-classifier` and `dvc`) in the
project's checkout, RAKUTEN_PROJECT_DIR (default: the folder above orchestration/), from its
environment RAKUTEN_VENV (default: the checkout's .venv): Airflow
lives in an environment of its own (.venv-airflow) and imports nothing of the project. The
store, the registry and the DVC remote come from the worker's environment
(RAKUTEN_API_DATABASE_URL, MLFLOW_TRACKING_URI, AWS_* as .env.example documents).
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pendulum
from airflow.sdk import Param, TriggerRule, dag, get_current_context, task

PROJECT = Path(os.environ.get("RAKUTEN_PROJECT_DIR", Path(__file__).resolve().parents[2]))
BIN = Path(os.environ.get("RAKUTEN_VENV", PROJECT / ".venv")) / "bin"
CLI = shlex.quote(str(BIN / "rakuten-classifier"))
DVC = shlex.quote(str(BIN / "dvc"))
SKIPPED = 99  # the exit status a task uses to say "skipped" (BashOperator's default)
# The project's commands first on PATH: DVC runs each stage's `python` from it.
ENV = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
# The commit's author, unless the worker's environment names one.
for _role in ("AUTHOR", "COMMITTER"):
    ENV[f"GIT_{_role}_NAME"] = os.environ.get(f"GIT_{_role}_NAME", "rakuten-retraining")
    ENV[f"GIT_{_role}_EMAIL"] = os.environ.get(f"GIT_{_role}_EMAIL", "retraining@localhost")
STEPS = ("check", "export", "reproduce", "register", "promote", "publish")
BASH = {"cwd": str(PROJECT), "env": ENV, "append_env": True, "skip_on_exit_code": SKIPPED}


@dag(
    dag_id="rakuten_retraining",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # two runs would race on the checkout and the registry
    tags=["rakuten", "retraining"],
    params={
        "force": Param(False, type="boolean", description="Retrain even without a trigger."),
        "push": Param(True, type="boolean", description="dvc push the new data and models."),
        "evidence": Param(
            "heldout",
            enum=["heldout", "online"],
            description="Promote now on held-out metrics, or leave it to the "
            "rakuten_promotion DAG once shadow traffic has feedback.",
        ),
    },
    doc_md=__doc__,
)
def rakuten_retraining() -> None:
    @task.bash(**BASH)
    def check() -> str:
        force = get_current_context()["params"]["force"]
        return f"{CLI} retrain-check --skip-exit-code {0 if force else SKIPPED}"

    @task.bash(**BASH)
    def export() -> str:
        # The batch folder is the command's last line; nothing new: no batch, no `dvc add`.
        return (
            f"batch=$({CLI} feedback-export) && "
            f'if [ -n "$batch" ]; then {DVC} add -q "$batch" && echo "$batch"; '
            "else echo none; fi"
        )

    @task.bash(**BASH)
    def reproduce() -> str:
        return f"{DVC} repro && {DVC} metrics show --json | tail -1"

    @task.bash(**BASH)
    def register() -> str:
        return f"{CLI} register --alias challenger"

    @task.bash(**BASH)
    def promote() -> str:
        if get_current_context()["params"]["evidence"] == "online":
            return f"echo 'left to rakuten_promotion (online evidence)'; exit {SKIPPED}"
        return f"{CLI} promote --evidence heldout --refused-exit-code {SKIPPED}"

    @task.bash(**BASH, trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def publish() -> str:
        run_id = get_current_context()["run_id"]
        push = get_current_context()["params"]["push"]
        message = shlex.quote(f"Retraining {run_id}: new feedback batch, dvc.lock")
        return (
            "git add dvc.lock data/feedback && "
            f"(git diff --cached --quiet || git commit -q -m {message}) && "
            + (f"{DVC} push -q && " if push else "")
            + "git rev-parse HEAD"
        )

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def report() -> str:
        """Every task's state and last output line, as reports/retraining/<run id>.md."""
        context = get_current_context()
        ti, run_id = context["ti"], context["run_id"]
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=list(STEPS), run_ids=[run_id])
        states = states.get(run_id, {})
        lines = [f"# Retraining run {run_id}", "", "| task | state | output |", "|---|---|---|"]
        for name in STEPS:
            output = str(ti.xcom_pull(task_ids=name) or "").replace("|", "\\|")
            lines.append(f"| {name} | {states.get(name)} | `{output[:300]}` |")
        text = "\n".join(lines) + "\n"
        folder = PROJECT / "reports" / "retraining"
        folder.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
        partial = folder / f".{safe}.md.tmp"
        partial.write_text(text, encoding="utf-8")
        partial.replace(folder / f"{safe}.md")
        return json.dumps({"report": str(folder / f"{safe}.md")})

    checked = check()
    exported = export()
    reproduced = reproduce()
    registered = register()
    promoted = promote()
    published = publish()
    checked >> exported >> reproduced >> registered >> promoted >> published
    registered >> published  # a refused promotion still publishes the retrained challenger
    [checked, exported, reproduced, registered, promoted, published] >> report()


rakuten_retraining()
