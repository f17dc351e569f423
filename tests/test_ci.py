"""ci/pr_report.sh, what .github/workflows/pr.yml runs on a pull request: here against a local
two-commit history (a base branch with its run, a pull-request branch that changes a param),
posting disabled; and ci/post_pr_comment.py against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, PipelineRun, command_env, committed_copy, run, set_params

MARKER = "<!-- rakuten-classifier-pr-report -->"
GITHUB_VARIABLES = ("GITHUB_TOKEN", "PR_NUMBER", "GITHUB_BASE_REF", "GITHUB_RUN_ID")
TOKEN = "test-token-not-a-secret"


def ci_env(**extra: str) -> dict[str, str]:
    """The user's environment without any GitHub Actions variable (the suite itself may run
    in GitHub Actions, where they are set), plus `extra`."""
    env = {k: v for k, v in command_env().items() if k not in GITHUB_VARIABLES}
    return {**env, **extra}


@pytest.fixture(scope="module")
def pr_project(tmp_path_factory: pytest.TempPathFactory, pipeline_run: PipelineRun) -> Path:
    """main: the session's run committed. pr: one more commit that switches the fusion method
    (folds=0: the repro reruns train_fusion and predict only)."""
    root = committed_copy(pipeline_run.root, tmp_path_factory.mktemp("ci") / "project")
    shutil.copytree(REPO / "ci", root / "ci")
    run(["git", "add", "ci"], root)
    run(["git", "commit", "-q", "-m", "CI scripts"], root)
    run(["git", "checkout", "-q", "-b", "pr"], root)
    set_params(root / "params.yaml", {"train_fusion.method": "stacking", "train_fusion.folds": 0})
    run(["git", "commit", "-q", "-am", "Try the stacking fusion"], root)
    return root


@pytest.fixture(scope="module")
def pr_run(pr_project: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["bash", "ci/pr_report.sh", "--no-setup", "--no-tests", "main"],
        cwd=pr_project,
        env=ci_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_script_reproduces_only_what_the_pull_request_changed(
    pr_run: subprocess.CompletedProcess,
) -> None:
    output = pr_run.stdout + pr_run.stderr
    assert "Running stage 'train_fusion'" in output and "Running stage 'predict'" in output
    assert "Running stage 'train_text'" not in output
    assert "comment not posted" in pr_run.stdout


def test_comment_holds_the_comparison_with_the_base_branch(
    pr_run: subprocess.CompletedProcess, pr_project: Path
) -> None:
    comment = (pr_project / "reports/pr/comment.md").read_text()
    assert comment.startswith(MARKER + "\n# workspace compared with main\n")
    assert '| `train_fusion.method` | `"weighted"` | `"stacking"` |' in comment
    assert "| `train_fusion.folds` | `5` | `0` |" in comment
    assert "## Metrics on the held-out test split" in comment
    # DVC's own diff of every tracked metric: the fusion stage's held-out set shrank with
    # folds=0 (validation split only instead of out-of-fold + validation).
    assert "dvc metrics diff main" in comment
    assert "dvclive/train_fusion/metrics.json" in comment
    # Plots stay in the report folder (a comment cannot show local files).
    assert ".png" not in comment and "## Plots" not in comment
    assert "Plots: reports/pr/report.html" in comment
    report = (pr_project / "reports/pr/report.md").read_text()
    assert "## Plots" in report and (pr_project / "reports/pr/report.html").exists()


def test_workspace_metrics_are_the_reproduced_ones(
    pr_run: subprocess.CompletedProcess, pr_project: Path
) -> None:
    fusion = json.loads((pr_project / "dvclive/train_fusion/metrics.json").read_text())
    base = yaml.safe_load(run(["git", "show", "main:dvc.lock"], pr_project).stdout)
    lock = yaml.safe_load((pr_project / "dvc.lock").read_text())
    assert lock["stages"]["train_fusion"]["params"]["params.yaml"]["train_fusion"]["folds"] == 0
    assert base["stages"]["train_fusion"]["params"]["params.yaml"]["train_fusion"]["folds"] == 5
    base_fusion = run(["git", "show", "main:dvclive/train_fusion/metrics.json"], pr_project)
    assert fusion["held_out"]["products"] < json.loads(base_fusion.stdout)["held_out"]["products"]


def test_missing_base_revision_is_a_clear_error(pr_project: Path) -> None:
    result = subprocess.run(
        ["bash", "ci/pr_report.sh", "--no-setup", "--no-tests"],
        cwd=pr_project,
        env=ci_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "base revision 'origin/main' not found" in result.stderr
    assert "fetch-depth: 0" in result.stderr


# --- posting the comment ------------------------------------------------------------------


class FakeGitHub(BaseHTTPRequestHandler):
    """The three REST endpoints the poster uses, recording every request."""

    comments: list[dict[str, Any]]
    requests: list[tuple[str, str, dict[str, str], Any]]
    refuse_writes = False

    def _reply(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.requests.append((self.command, self.path, dict(self.headers), body))
        return body

    def do_GET(self) -> None:
        self._record()
        self._reply(200, self.comments)

    def do_POST(self) -> None:
        body = self._record()
        if self.refuse_writes:
            self._reply(403, {"message": "Resource not accessible by integration"})
            return
        self._reply(201, {"html_url": "http://127.0.0.1/comment/1", "body": body["body"]})

    def do_PATCH(self) -> None:
        body = self._record()
        self._reply(200, {"html_url": "http://127.0.0.1/comment/55", "body": body["body"]})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def github(tmp_path: Path) -> Iterator[tuple[str, type[FakeGitHub]]]:
    handler = type("Handler", (FakeGitHub,), {"comments": [], "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def post(body_file: Path, api: str) -> subprocess.CompletedProcess:
    env = ci_env(
        GITHUB_TOKEN=TOKEN, GITHUB_REPOSITORY="owner/repo", PR_NUMBER="7", GITHUB_API_URL=api
    )
    return subprocess.run(
        [sys.executable, str(REPO / "ci/post_pr_comment.py"), str(body_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_first_post_creates_the_comment(github, tmp_path: Path) -> None:
    api, server = github
    body = tmp_path / "comment.md"
    body.write_text(f"{MARKER}\n# report\n")
    result = post(body, api)
    assert result.returncode == 0, result.stderr
    methods = [(method, path.split("?")[0]) for method, path, _, _ in server.requests]
    assert methods == [
        ("GET", "/repos/owner/repo/issues/7/comments"),
        ("POST", "/repos/owner/repo/issues/7/comments"),
    ]
    _, _, headers, payload = server.requests[1]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert payload == {"body": f"{MARKER}\n# report\n"}
    assert TOKEN not in result.stdout + result.stderr


def test_next_post_updates_the_same_comment(github, tmp_path: Path) -> None:
    api, server = github
    server.comments.extend(
        [
            {"url": f"{api}/repos/owner/repo/issues/comments/54", "body": "looks good"},
            {"url": f"{api}/repos/owner/repo/issues/comments/55", "body": f"{MARKER}\nold"},
        ]
    )
    body = tmp_path / "comment.md"
    body.write_text("# new report\n")  # the marker is added when missing
    result = post(body, api)
    assert result.returncode == 0, result.stderr
    method, path, _, payload = server.requests[-1]
    assert (method, path) == ("PATCH", "/repos/owner/repo/issues/comments/55")
    assert payload["body"] == f"{MARKER}\n# new report\n"


def test_refused_post_is_a_warning_not_a_failure(github, tmp_path: Path) -> None:
    api, server = github
    server.refuse_writes = True
    body = tmp_path / "comment.md"
    body.write_text("# report\n")
    result = post(body, api)
    assert result.returncode == 0
    assert result.stdout.startswith("::warning::the report comment was not posted: 403")
    assert TOKEN not in result.stdout + result.stderr
