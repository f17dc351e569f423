"""Post a Markdown file as the pull request's report comment, through the GitHub REST API.

    python ci/post_pr_comment.py reports/pr/comment.md

Reads GITHUB_TOKEN, GITHUB_REPOSITORY (owner/name) and PR_NUMBER, and GITHUB_API_URL (set by
GitHub Actions; https://api.github.com otherwise). The comment carries a marker, so each push
updates the same comment instead of adding one more. A refused post (a pull request from a fork
gets a read-only token) is a warning, not a failed check: the report is in the run's artifact.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import requests

MARKER = "<!-- rakuten-classifier-pr-report -->"
MAX_BODY = 65_000  # GitHub refuses comments over 65,536 characters
TIMEOUT_S = 30


def post(body: str, api: str, repository: str, number: str, token: str) -> str:
    """Update the marked comment of pull request `number`, or create it; returns its URL."""
    if MARKER not in body:
        body = f"{MARKER}\n{body}"
    if len(body) > MAX_BODY:
        body = body[:MAX_BODY] + "\n\n(cut: the whole report is in the run's artifact)"
    session = requests.Session()
    session.headers.update(
        {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        }
    )
    comments_url = f"{api}/repos/{repository}/issues/{number}/comments"
    listed = session.get(comments_url, params={"per_page": 100}, timeout=TIMEOUT_S)
    listed.raise_for_status()
    mine = next((c for c in listed.json() if MARKER in (c.get("body") or "")), None)
    if mine:
        response = session.patch(mine["url"], json={"body": body}, timeout=TIMEOUT_S)
    else:
        response = session.post(comments_url, json={"body": body}, timeout=TIMEOUT_S)
    response.raise_for_status()
    return response.json().get("html_url", "")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    missing = [
        name
        for name in ("GITHUB_TOKEN", "GITHUB_REPOSITORY", "PR_NUMBER")
        if not os.environ.get(name)
    ]
    if missing:
        print(f"error: {', '.join(missing)} not set: nothing posted", file=sys.stderr)
        return 2
    body = Path(argv[1]).read_text(encoding="utf-8")
    api = os.environ.get("GITHUB_API_URL", "https://api.github.com").rstrip("/")
    try:
        url = post(
            body,
            api,
            os.environ["GITHUB_REPOSITORY"],
            os.environ["PR_NUMBER"],
            os.environ["GITHUB_TOKEN"],
        )
    except requests.RequestException as error:
        # `::warning::` shows in the GitHub Actions summary; the token is never printed.
        print(f"::warning::the report comment was not posted: {error}")
        return 0
    print(f"report posted: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
