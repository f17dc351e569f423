#!/usr/bin/env bash
# The pull-request check that .github/workflows/pr.yml runs; it also runs by hand:
#
#   ci/pr_report.sh [--no-setup] [--no-tests] [BASE]
#
# Installs from the lock file (`make setup`), runs the tests (`make test`), reproduces the
# pipeline on the sample (`dvc repro`), compares the result with BASE (default:
# origin/$GITHUB_BASE_REF, else origin/main) and writes the comparison to $PR_REPORT_DIR
# (default reports/pr): report.md with its PNGs and report.html, and comment.md. Inside a
# GitHub pull request (GITHUB_TOKEN and PR_NUMBER set) comment.md is posted on the pull
# request; anywhere else it is only written.
set -euo pipefail
cd "$(dirname "$0")/.."

setup=1
tests=1
base=""
for arg in "$@"; do
    case "$arg" in
        --no-setup) setup=0 ;;
        --no-tests) tests=0 ;;
        -*) echo "error: unknown option $arg (see the top of $0)" >&2; exit 2 ;;
        *) base="$arg" ;;
    esac
done
base="${base:-origin/${GITHUB_BASE_REF:-main}}"
out="${PR_REPORT_DIR:-reports/pr}"

if ! git rev-parse --verify --quiet "$base^{commit}" >/dev/null; then
    echo "error: base revision '$base' not found; the comparison needs the base branch's" \
        "history (actions/checkout with fetch-depth: 0, or git fetch origin)" >&2
    exit 2
fi

if [ "$setup" = 1 ]; then make setup; fi
# The Makefile's virtual environment where there is one, else the commands already on PATH.
if [ -x .venv/bin/dvc ]; then export PATH="$PWD/.venv/bin:$PATH"; fi
if [ "$tests" = 1 ]; then make test; fi

echo "--- dvc repro"
dvc repro
echo "--- report against $base"
rakuten-classifier report --baseline "$base" --out "$out"

# The comment: the report without its plots (a comment cannot show the run's PNGs; they are
# in report.html, uploaded with the run), then every tracked metric as DVC compares them.
{
    echo "<!-- rakuten-classifier-pr-report -->"
    sed '/^## Plots$/,$d' "$out/report.md"
    echo "<details><summary>Every tracked metric: <code>dvc metrics diff $base</code></summary>"
    echo
    dvc metrics diff "$base" --md || echo "(dvc metrics diff failed: see the job's log)"
    echo "</details>"
    echo
    if [ -n "${GITHUB_RUN_ID:-}" ]; then
        run_url="${GITHUB_SERVER_URL:-https://github.com}/${GITHUB_REPOSITORY}/actions/runs/${GITHUB_RUN_ID}"
        echo "Plots (per-class F1 change, confusion matrices, training curves): the" \
            "\`pr-report\` artifact of [this run]($run_url), report.html opens offline."
    else
        echo "Plots: $out/report.html (opens offline)."
    fi
} >"$out/comment.md"

if [ -n "${GITHUB_TOKEN:-}" ] && [ -n "${PR_NUMBER:-}" ]; then
    python ci/post_pr_comment.py "$out/comment.md"
else
    echo "Not in a GitHub pull request (GITHUB_TOKEN or PR_NUMBER unset): comment not posted."
fi
echo "report: $out/report.md, comment: $out/comment.md"
