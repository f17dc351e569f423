"""The MLflow model registry: the pipeline's bundles as versions of one registered model, the
aliases `champion` (what the API serves) and `challenger` (what it tries), and a record of every
alias move, which MLflow itself does not keep.

The project uses the MLflow client (mlflow-skinny); the server runs from its own environment
(`make mlflow`, docs/registry.md). Every function takes the tracking URI explicitly.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from rakuten_classifier import config
from rakuten_classifier.bundle import MANIFEST_JSON, read_manifest
from rakuten_classifier.config import logger
from rakuten_classifier.files import atomic_dir, read_json
from rakuten_classifier.pyfunc import BUNDLE_ARTIFACT, MODEL_CODE, SIGNATURE

DEFAULT_MODEL = "rakuten"
CHAMPION, CHALLENGER = "champion", "challenger"
ALIASES = (CHAMPION, CHALLENGER)
MODELS_EXPERIMENT = "rakuten-models"
HISTORY_EXPERIMENT = "rakuten-registry-history"
MODEL_ARTIFACT = "model"
DEFAULT_TRACKING_URI = "http://127.0.0.1:5000"
# Nothing leaves the machine but the calls to the tracking server.
_QUIET = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


class RegistryError(RuntimeError):
    """The registry cannot do what was asked: says what, for which model and version."""


def tracking_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def client(uri: str | None = None) -> Any:
    """An MLflow client of the server at `uri`. MLflow's module-level calls (logging a model,
    downloading artifacts) follow its global URIs, which are set to the same server: left
    unset, the registry URI would default to a local SQLite file."""
    os.environ.update(_QUIET)
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@dataclass
class ModelVersion:
    """A registered version: its number, aliases, tags and held-out metrics."""

    name: str
    version: str
    aliases: list[str]
    tags: dict[str, str]
    source: str

    @property
    def bundle_version(self) -> str:
        return self.tags.get("bundle_version", "")

    @classmethod
    def of(cls, found: Any) -> ModelVersion:
        return cls(
            found.name,
            str(found.version),
            list(found.aliases or []),
            dict(found.tags or {}),
            found.source,
        )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _git(project: Path, *args: str) -> str:
    try:
        result = subprocess.run(
            ["git", *args], cwd=project, capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout.strip()


def lineage_tags(bundle_dir: Path, project: Path) -> dict[str, str]:
    """Where a bundle comes from: the git commit, whether the tree had uncommitted changes,
    and the bundle's hash in dvc.lock (what `dvc pull` fetches)."""
    tags = {"git_commit": _git(project, "rev-parse", "HEAD") or "unknown"}
    tags["git_dirty"] = str(bool(_git(project, "status", "--porcelain"))).lower()
    lock = project / "dvc.lock"
    tags["dvc_lock_md5"] = "unknown"
    if lock.is_file():
        stages = yaml.safe_load(lock.read_text(encoding="utf-8")).get("stages", {})
        for out in stages.get("predict", {}).get("outs", []):
            if (project / out["path"]).resolve() == Path(bundle_dir).resolve():
                tags["dvc_lock_md5"] = out.get("md5", "unknown")
    return tags


def _experiment(mlflow_client: Any, name: str) -> str:
    found = mlflow_client.get_experiment_by_name(name)
    return found.experiment_id if found else mlflow_client.create_experiment(name)


def find_version(uri: str | None, name: str, bundle_version: str) -> ModelVersion | None:
    """The registered version holding this bundle (same content), if there is one."""
    found = client(uri).search_model_versions(
        f"name='{name}' and tag.bundle_version='{bundle_version}'"
    )
    return ModelVersion.of(found[0]) if found else None


def register_bundle(
    bundle_dir: Path,
    *,
    uri: str | None = None,
    name: str = DEFAULT_MODEL,
    project: Path = Path("."),
    alias: str | None = None,
    user: str | None = None,
) -> ModelVersion:
    """Log a bundle as a pyfunc model and register it as a new version of `name` (or return
    the version that already holds this very bundle), tagged with its lineage, params and
    held-out metrics. With `alias`: `challenger` is set at once; `champion` only while there is
    none (after that, `promote` moves it through the gate)."""
    manifest = read_manifest(bundle_dir)  # every file's sha256 checked before anything is sent
    bundle_version = manifest["model_version"]
    mlflow_client = client(uri)
    if alias == CHAMPION and _alias_version(mlflow_client, name, CHAMPION) is not None:
        raise RegistryError(
            f"{name} has a champion already: register as challenger, then "
            "`rakuten-classifier promote` (the promotion gate) moves the champion"
        )
    existing = find_version(uri, name, bundle_version)
    if existing is None:
        existing = _log_and_register(bundle_dir, manifest, uri, name, project)
    else:
        logger.info("bundle %s is already %s version %s", bundle_version, name, existing.version)
    if alias is not None:
        move_alias(uri, name, alias, existing.version, user=user, reason="registered")
    return describe(uri, name, existing.version)


def _log_and_register(
    bundle_dir: Path, manifest: dict[str, Any], uri: str | None, name: str, project: Path
) -> ModelVersion:
    import mlflow

    mlflow_client = client(uri)
    tags = {**lineage_tags(bundle_dir, project), "bundle_version": manifest["model_version"]}
    metrics = {
        key: float(value)
        for key, value in _flatten(manifest.get("metrics", {})).items()
        if isinstance(value, int | float)
    }
    for model, scores in manifest.get("per_class_f1", {}).items():
        metrics.update({f"per_class_f1.{model}.{code}": f1 for code, f1 in scores.items()})
    experiment = _experiment(mlflow_client, MODELS_EXPERIMENT)
    with mlflow.start_run(experiment_id=experiment, run_name=manifest["model_version"]) as run:
        mlflow.set_tags(tags)
        params = _flatten(manifest.get("params", {}))
        mlflow.log_params({key: json.dumps(value) for key, value in params.items()})
        mlflow.log_metrics(metrics)
        with warnings.catch_warnings():
            # The signature says what a row is; an example row would make MLflow load the
            # whole bundle (TensorFlow) only to check it.
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            logged = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=str(MODEL_CODE),
                artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
                signature=SIGNATURE,
                pip_requirements=["rakuten-classifier"],
            )
    version = mlflow.register_model(logged.model_uri, name, tags=tags)
    # Registration is asynchronous on some backends: wait until the version is usable.
    for _ in range(60):
        current = mlflow_client.get_model_version(name, version.version)
        if current.status == "READY":
            break
        time.sleep(0.5)
    logger.info("registered %s version %s (run %s)", name, version.version, run.info.run_id)
    return ModelVersion.of(mlflow_client.get_model_version(name, version.version))


def describe(uri: str | None, name: str, version: str) -> ModelVersion:
    try:
        return ModelVersion.of(client(uri).get_model_version(name, str(version)))
    except Exception as error:  # MlflowException: the message says what is missing
        raise RegistryError(f"{name} version {version}: {error}") from error


def _alias_version(mlflow_client: Any, name: str, alias: str) -> str | None:
    try:
        return str(mlflow_client.get_model_version_by_alias(name, alias).version)
    except Exception:  # no such model or alias
        return None


def resolve(uri: str | None, name: str, alias: str) -> ModelVersion | None:
    """The version an alias points to, or None."""
    version = _alias_version(client(uri), name, alias)
    return describe(uri, name, version) if version is not None else None


def versions(uri: str | None, name: str = DEFAULT_MODEL) -> list[ModelVersion]:
    """Every version of `name`, oldest first, with its aliases."""
    mlflow_client = client(uri)
    found = [ModelVersion.of(v) for v in mlflow_client.search_model_versions(f"name='{name}'")]
    if found:
        # Search results leave the aliases out: the registered model has them.
        aliases = mlflow_client.get_registered_model(name).aliases
        for version in found:
            version.aliases = sorted(a for a, v in aliases.items() if str(v) == version.version)
    return sorted(found, key=lambda v: int(v.version))


def _bundle_in(model_dir: Path) -> Path | None:
    """The bundle folder inside a downloaded pyfunc model: MLmodel names it (MLflow keeps an
    artifact under its source folder's name, whatever its key)."""
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        return None
    flavor = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))["flavors"]["python_function"]
    entry = flavor.get("artifacts", {}).get(BUNDLE_ARTIFACT, {})
    path = model_dir / entry.get("path", "")
    return path if entry and (path / MANIFEST_JSON).is_file() else None


def download_bundle(uri: str | None, found: ModelVersion, cache_dir: Path) -> Path:
    """The version's bundle, downloaded once into the cache (checked by `load_bundle` when it
    is loaded). The cache folder is named after the logged model the version points to, not
    its number alone: another registry's version 1 is another bundle."""
    source = hashlib.sha256(found.source.encode()).hexdigest()[:16]
    target = Path(cache_dir) / found.name / f"{found.version}-{source}"
    if (bundle_dir := _bundle_in(target)) is not None:
        return bundle_dir
    client(uri)
    import mlflow.artifacts

    with atomic_dir(target) as tmp:
        mlflow.artifacts.download_artifacts(
            artifact_uri=found.source, dst_path=str(tmp), tracking_uri=tracking_uri(uri)
        )
    bundle_dir = _bundle_in(target)
    version = read_json(bundle_dir / MANIFEST_JSON)["model_version"] if bundle_dir else None
    if bundle_dir is None or (found.bundle_version and version != found.bundle_version):
        shutil.rmtree(target, ignore_errors=True)
        raise RegistryError(
            f"{found.name} version {found.version} holds no model bundle, or not the one it "
            f"was registered with (bundle {found.bundle_version})"
        )
    return bundle_dir


def bundle_manifest(uri: str | None, found: ModelVersion, cache_dir: Path) -> dict[str, Any]:
    return read_json(download_bundle(uri, found, cache_dir) / MANIFEST_JSON)


# --- alias moves and their history ------------------------------------------------------------


def move_alias(
    uri: str | None,
    name: str,
    alias: str,
    version: str,
    *,
    user: str | None = None,
    reason: str = "",
    evidence: str = "",
    forced: bool = False,
    gate: str = "",
) -> None:
    """Point `alias` at `version` and record the move: who, when, from which version, why."""
    if alias not in ALIASES:
        raise RegistryError(f"unknown alias '{alias}': {', '.join(ALIASES)}")
    mlflow_client = client(uri)
    previous = _alias_version(mlflow_client, name, alias)
    mlflow_client.set_registered_model_alias(name, alias, str(version))
    _record_move(
        mlflow_client,
        name,
        alias,
        previous,
        str(version),
        user,
        reason=reason,
        evidence=evidence,
        forced=str(forced).lower(),
        gate=gate[:4900],  # MLflow keeps tag values up to 5000 characters
    )


def clear_alias(uri: str | None, name: str, alias: str, *, user: str | None = None) -> None:
    """Remove `alias` (a challenger promoted to champion, say) and record it."""
    mlflow_client = client(uri)
    previous = _alias_version(mlflow_client, name, alias)
    if previous is None:
        return
    mlflow_client.delete_registered_model_alias(name, alias)
    _record_move(mlflow_client, name, alias, previous, "", user, reason="cleared")


def _record_move(
    mlflow_client: Any,
    name: str,
    alias: str,
    previous: str | None,
    version: str,
    user: str | None,
    **details: str,
) -> None:
    """One run of the history experiment per alias move, its tags saying what happened."""
    who = user or os.environ.get("RAKUTEN_REGISTRY_USER") or getpass.getuser()
    experiment = _experiment(mlflow_client, HISTORY_EXPERIMENT)
    run = mlflow_client.create_run(
        experiment,
        run_name=f"{alias}: {previous or '-'} -> {version or '-'}",
        tags={
            "model": name,
            "alias": alias,
            "from_version": previous or "",
            "to_version": version,
            "user": who,
            **details,
        },
    )
    mlflow_client.set_terminated(run.info.run_id)
    logger.info("%s %s: %s -> %s (%s)", name, alias, previous or "-", version or "-", who)


def history(uri: str | None, name: str = DEFAULT_MODEL) -> pd.DataFrame:
    """Every recorded alias move of `name`, oldest first."""
    mlflow_client = client(uri)
    found = mlflow_client.get_experiment_by_name(HISTORY_EXPERIMENT)
    columns = ["when", "alias", "from", "to", "user", "forced", "evidence", "reason"]
    if found is None:
        return pd.DataFrame(columns=columns)
    runs = mlflow_client.search_runs(
        [found.experiment_id], f"tags.model = '{name}'", order_by=["attributes.start_time ASC"]
    )
    rows = [
        {
            "when": datetime.fromtimestamp(run.info.start_time / 1000, UTC).isoformat(
                timespec="seconds"
            ),
            "alias": run.data.tags.get("alias", ""),
            "from": run.data.tags.get("from_version", ""),
            "to": run.data.tags.get("to_version", ""),
            "user": run.data.tags.get("user", ""),
            "forced": run.data.tags.get("forced", "false"),
            "evidence": run.data.tags.get("evidence", ""),
            "reason": run.data.tags.get("reason", ""),
        }
        for run in runs
    ]
    return pd.DataFrame(rows, columns=columns)


def default_cache() -> Path:
    return config.default_cache_dir() / "registry"
