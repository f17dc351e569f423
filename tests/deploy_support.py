"""What the deployment tests (test_deploy.py, test_k8s.py) share: the project's command line
parsing a container's command, and the variables the services read that are not theirs."""

from __future__ import annotations

from typing import Any

import typer

from rakuten_classifier.cli import app

# Variables the services read that are not the project's: telemetry off, MLflow's own client.
THIRD_PARTY = {"DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "MLFLOW_TRACKING_URI"}


def parsed_command(command: list[str]) -> tuple[Any, dict[str, Any]]:
    """`rakuten-classifier SUB [SUB] --options...`, parsed by the real command-line interface
    (an unknown option or command fails here as it would in the container): the command
    object and its parameters' values."""
    assert command[0] == "rakuten-classifier", command
    current = typer.main.get_command(app)
    words = list(command[1:])
    while hasattr(current, "commands"):
        current = current.commands[words.pop(0)]
    return current, current.make_context(current.name, words).params


def envvars_of(command: Any) -> set[str]:
    """The environment variables a command's options read."""
    names = set()
    for param in command.params:
        names.update([param.envvar] if isinstance(param.envvar, str) else param.envvar or [])
    return names
