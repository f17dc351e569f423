"""The Kubernetes manifests, checked without a cluster: `kubectl kustomize` renders every overlay,
`kubernetes-validate --strict` checks every object against the Kubernetes schemas, and the names
the manifests give the containers (variables, secret files, ports, paths, commands) are the ones
the project's code reads."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import BIN, REPO
from deploy_support import THIRD_PARTY, envvars_of, parsed_command
from distributed.cli import dask_scheduler, dask_worker

from rakuten_classifier.serve.routes import public
from rakuten_classifier.serve.settings import ENV_PREFIX, Settings
from rakuten_classifier.store.database import DATABASE_URL_VARIABLE, SECRETS_DIR_VARIABLE

K8S = REPO / "deploy" / "k8s"
OVERLAYS = sorted(path.name for path in (K8S / "overlays").iterdir())


def render(folder: Path) -> list[dict]:
    result = subprocess.run(
        [
            str(BIN / "kubectl"),
            "kustomize",
            "--load-restrictor",
            "LoadRestrictionsNone",
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def validate(objects: list[dict], folder: Path) -> subprocess.CompletedProcess:
    rendered = folder / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(objects))
    return subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", str(rendered)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def find(objects: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def container(objects: list[dict], kind: str, name: str, index: int = 0) -> dict:
    spec = find(objects, kind, name)["spec"]["template"]["spec"]
    return spec["containers"][index]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    return request.param, render(K8S / "overlays" / request.param)


def test_every_overlay_passes_strict_schema_validation(
    overlay: tuple[str, list[dict]], tmp_path: Path
) -> None:
    _, objects = overlay
    result = validate(objects, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress",
            "ConfigMap", "CronJob", "Namespace", "Job"} <= kinds  # fmt: skip
    assert "Secret" not in kinds  # referenced by name, never held in git
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {
        find(objects, "Namespace", o["metadata"]["name"])["metadata"]["name"]
        for o in objects
        if o["kind"] == "Namespace"
    }


def test_validation_refuses_a_wrong_field(tmp_path: Path) -> None:
    objects = render(K8S / "base")
    api = find(objects, "Deployment", "rakuten-api")
    api["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/"
    result = validate(objects, tmp_path)
    assert result.returncode != 0 and "paht" in result.stdout + result.stderr


def settings_env(objects: list[dict], spec: dict) -> dict[str, str]:
    """A container's environment: its ConfigMaps' data, then its own variables."""
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        env.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({item["name"]: item.get("value", "") for item in spec.get("env", [])})
    return env


def mounted_files(objects: list[dict], kind: str, name: str, spec: dict) -> dict[str, str]:
    """Secret files a container sees: path -> the Secret's key."""
    volumes = find(objects, kind, name)["spec"]["template"]["spec"]["volumes"]
    secrets = {v["name"]: v["secret"] for v in volumes if "secret" in v}
    return {
        f"{mount['mountPath']}/{item['path']}": item["key"]
        for mount in spec["volumeMounts"]
        if mount["name"] in secrets
        for item in secrets[mount["name"]]["items"]
    }


def test_the_api_pod_gives_the_server_what_it_reads(
    overlay: tuple[str, list[dict]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, objects = overlay
    api = container(objects, "Deployment", "rakuten-api")
    env = settings_env(objects, api)
    fields = {f"{ENV_PREFIX}{field.upper()}" for field in Settings.model_fields}
    ours = {key for key in env if key.startswith(ENV_PREFIX)}
    assert ours <= fields, ours - fields
    init = find(objects, "Deployment", "rakuten-api")["spec"]["template"]["spec"]
    pull_command, pull = parsed_command(init["initContainers"][0]["command"])
    other = set(env) - ours - {SECRETS_DIR_VARIABLE}
    assert other <= THIRD_PARTY | envvars_of(pull_command) | {"RAKUTEN_REGISTERED_MODEL"}
    # Secret files: the settings of the same name in RAKUTEN_SECRETS_DIR, the users' file.
    files = mounted_files(objects, "Deployment", "rakuten-api", api)
    monkeypatch.delenv(DATABASE_URL_VARIABLE)
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for path, key in files.items():
        if Path(path).parent == Path(env[SECRETS_DIR_VARIABLE]):
            (secrets_dir / Path(path).name).write_text(f"{key}-" + "x" * 40)
    assert env[f"{ENV_PREFIX}USERS_FILE"] in files
    overrides = {k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items() if k in ours}
    settings = Settings(_env_file=None, _secrets_dir=secrets_dir, **overrides)
    assert settings.secret.get_secret_value().startswith("rakuten_api_secret-")
    assert settings.database_url.get_secret_value().startswith("rakuten_api_database_url-")
    # The port, the probes' path, the pulled bundles' cache, the writable paths.
    assert [p["containerPort"] for p in api["ports"]] == [settings.port]
    routes = {route.path for route in public.routes}
    for probe in ("readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"]["path"] in routes
    assert pull["cache"] == settings.model_cache
    mounts = {mount["mountPath"] for mount in api["volumeMounts"]}
    assert {str(settings.model_cache), str(settings.store_spool_dir)} <= mounts
    annotations = find(objects, "Deployment", "rakuten-api")["spec"]["template"]["metadata"]
    assert annotations["annotations"]["prometheus.io/port"] == str(settings.port)
    assert settings.mode == {"dev": "off", "production": "shadow"}[name]


def test_the_exporter_pod_gives_the_exporter_what_it_reads(
    overlay: tuple[str, list[dict]],
) -> None:
    _, objects = overlay
    exporter = container(objects, "Deployment", "rakuten-exporter")
    command, options = parsed_command(exporter["args"])
    env = settings_env(objects, exporter)
    files = mounted_files(objects, "Deployment", "rakuten-exporter", exporter)
    assert f"{env[SECRETS_DIR_VARIABLE]}/{DATABASE_URL_VARIABLE.lower()}" in files
    assert {"MLFLOW_TRACKING_URI", *envvars_of(command)} <= set(env)
    params = next(m for m in exporter["volumeMounts"] if m["name"] == "params")["mountPath"]
    assert Path(params) / "params.yaml" == options["params_file"]
    volumes = find(objects, "Deployment", "rakuten-exporter")["spec"]["template"]["spec"]
    params_volume = next(v for v in volumes["volumes"] if v["name"] == "params")
    params_map = find(objects, "ConfigMap", params_volume["configMap"]["name"])
    assert yaml.safe_load(params_map["data"]["params.yaml"])["drift"]
    assert [p["containerPort"] for p in exporter["ports"]] == [options["port"]]


def test_disruptions_and_scaling_leave_the_api_answering(overlay: tuple[str, list[dict]]) -> None:
    _, objects = overlay
    budget = find(objects, "PodDisruptionBudget", "rakuten-api")["spec"]["minAvailable"]
    autoscaler = find(objects, "HorizontalPodAutoscaler", "rakuten-api")["spec"]
    deployment = find(objects, "Deployment", "rakuten-api")["spec"]
    # A drain can always evict one pod, and a rollout never drops below the budget.
    assert budget < autoscaler["minReplicas"] <= deployment["replicas"] <= autoscaler["maxReplicas"]
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    api = container(objects, "Deployment", "rakuten-api")
    assert api["resources"]["requests"]["memory"] and api["resources"]["limits"]["memory"]


# --- the Dask cluster as dask-kubernetes operator resources ----------------------------------

DASK_COMMANDS = {"worker": dask_worker.main, "scheduler": dask_scheduler.main}


def dask_pods(objects: list[dict]) -> dict[str, dict]:
    """The pod specs the operator would create from its resources, as Pods (keyed by where
    they come from), and the scheduler services as Services: what the schemas can check."""
    wrapped = {}

    def cluster(prefix: str, spec: dict) -> None:
        wrapped[f"{prefix}/scheduler"] = {"kind": "Pod", "spec": spec["scheduler"]["spec"]}
        wrapped[f"{prefix}/service"] = {"kind": "Service", "spec": spec["scheduler"]["service"]}
        wrapped[f"{prefix}/worker"] = {"kind": "Pod", "spec": spec["worker"]["spec"]}

    for resource in objects:
        name = f"{resource['kind']}/{resource['metadata']['name']}"
        if resource["kind"] == "DaskCluster":
            cluster(name, resource["spec"])
        elif resource["kind"] == "DaskJob":
            cluster(name, resource["spec"]["cluster"]["spec"])
            wrapped[f"{name}/job"] = {"kind": "Pod", "spec": resource["spec"]["job"]["spec"]}
    for key, value in wrapped.items():
        value.update(apiVersion="v1", metadata={"name": key.lower().replace("/", "-")})
    return wrapped


def test_the_dask_operator_resources_hold_valid_pods_that_run_real_commands(
    tmp_path: Path,
) -> None:
    """No cluster here, so no operator either: the DaskCluster, DaskJob and DaskAutoscaler are
    checked by what they hold (pod and service specs, strictly against the Kubernetes schemas)
    and by their commands, parsed by dask's and the project's own command-line interfaces."""
    objects = render(K8S / "dask-operator")
    assert {o["kind"] for o in objects} == {"DaskCluster", "DaskJob", "DaskAutoscaler"}
    pods = dask_pods(objects)
    result = validate(list(pods.values()), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    autoscaler = find(objects, "DaskAutoscaler", "rakuten-dask")["spec"]
    assert find(objects, "DaskCluster", autoscaler["cluster"])
    assert 1 <= autoscaler["minimum"] <= autoscaler["maximum"]
    for key, pod in pods.items():
        if pod["kind"] == "Service":
            labels = pod["spec"]["selector"]
            assert labels["dask.org/component"] == "scheduler"
            assert labels["dask.org/cluster-name"] == key.split("/")[1]
            continue
        (box,) = pod["spec"]["containers"]
        if key.endswith("/job"):
            _, options = parsed_command(["rakuten-classifier", "predict", *box["args"]])
            assert options["scheduler"] == "$(DASK_SCHEDULER_ADDRESS)"  # the operator's variable
        else:
            assert box["command"][:2] == ["dask", key.rsplit("/", 1)[1]], key
            DASK_COMMANDS[box["command"][1]].make_context("dask", list(box["command"][2:]))
            assert box["image"].startswith("rakuten-classifier/predict"), key
        if key.endswith("/worker"):
            assert box["command"][2] == "$(DASK_SCHEDULER_ADDRESS)"
            assert {"mountPath": "/data", "name": "catalogue"} in box["volumeMounts"]
