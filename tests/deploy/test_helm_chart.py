"""The Helm chart `deploy/helm/saga-server`: `helm lint` passes, and `helm template` renders the
processes the README's scaled-out topology runs (ports, commands, probes, Secret-fed environment,
HPA, PDB, ServiceMonitor) with a configuration the project's own loader accepts.

helm comes from `scripts/helm.sh` (built once with `go install`, cached in .services/). Without
Go these tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import free_port
from tests.services import REPO_ROOT, in_ci, require_postgres
from workers.config import Config, load_config

# The first build of helm may take minutes; everything after it is quick.
pytestmark = pytest.mark.timeout(900)

CHART = REPO_ROOT / "deploy" / "helm" / "saga-server"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
RELEASE = "rel"
FULLNAME = "rel-saga-server"
CONFIG_FILE = "/etc/saga/config.yaml"

# What the Secrets named by the values hold, for the kubelet stand-in below. The password is
# everything YAML or a URL could misread: a number-like start, ': ', ' #', quotes, braces, '$('.
DB_URL = "postgres://saga:s3cret@db.internal:5432/saga?sslmode=require"
DB_PASSWORD = "12: #{p@ss} 'q\" $(HOME) \\"
SECRETS = {
    ("saga-database", "url"): DB_URL,
    ("saga-postgres", "password"): DB_PASSWORD,
    ("saga-kafka", "user"): "saga-svc",
    ("saga-kafka", "secret"): "yes",
}

Objects = dict[tuple[str, str], dict[str, Any]]


@pytest.fixture(scope="module")
def helm() -> str:
    """The path of helm, from scripts/helm.sh (a cached build needs no Go)."""
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "helm.sh")],
        capture_output=True,
        text=True,
        timeout=850,
    )
    if done.returncode != 0:
        if shutil.which("go") is None and not in_ci():
            why = "helm is built with Go by scripts/helm.sh and `go` is not on PATH"
            pytest.skip(f"{why}; never skipped under CI=true (it fails below)")
        pytest.fail(f"scripts/helm.sh failed:\n{done.stderr[-3000:]}", pytrace=False)
    return done.stdout.strip().splitlines()[-1]


def template(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart as release `rel` in namespace `saga`."""
    return subprocess.run(
        [helm, "template", RELEASE, str(CHART), "--namespace", "saga", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def render(helm: str, *args: str) -> Objects:
    """The rendered objects by (kind, name); fails the test when rendering fails."""
    done = template(helm, *args)
    assert done.returncode == 0, done.stderr
    objects: Objects = {}
    for doc in yaml.safe_load_all(done.stdout):
        if doc:
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} rendered twice"
            objects[key] = doc
    return objects


@pytest.fixture(scope="module")
def default(helm: str) -> Objects:
    return render(helm)


@pytest.fixture(scope="module")
def full(helm: str) -> Objects:
    return render(helm, "-f", str(FULL_VALUES))


def pod_spec(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = objects[(kind, name)]["spec"]["template"]["spec"]
    return spec


def containers(objects: Objects, kind: str, name: str) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod_spec(objects, kind, name)["containers"]}


def kubelet_env(container: dict[str, Any]) -> dict[str, str]:
    """The environment the container's process sees: Secret references resolved from SECRETS
    and `$(VAR)` replaced by variables defined earlier in the list, as Kubernetes does."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "valueFrom" in item:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = SECRETS[(ref["name"], ref["key"])]
            continue

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            return env.get(match.group(1), match.group(0))

        env[item["name"]] = re.sub(
            r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", substitute, item["value"]
        )
    return env


def loaded_config(objects: Objects, container: dict[str, Any], tmp_path: Path) -> Config:
    """The container's configuration as `workers.config` loads it: the mounted ConfigMap file
    plus the container's environment."""
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == CONFIG_FILE)
    volume = next(v for v in objects_volumes(objects, container) if v["name"] == mount["name"])
    text = objects[("ConfigMap", volume["configMap"]["name"])]["data"][mount["subPath"]]
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    env = kubelet_env(container)
    assert env["CONFIG_PATH"] == CONFIG_FILE
    return load_config(str(path), environ=env)


def objects_volumes(objects: Objects, container: dict[str, Any]) -> list[dict[str, Any]]:
    for (kind, _), obj in objects.items():
        if kind in ("Deployment", "Job"):
            spec = obj["spec"]["template"]["spec"]
            if any(c is container for c in spec["containers"]):
                volumes: list[dict[str, Any]] = spec["volumes"]
                return volumes
    raise AssertionError("container not found in any pod")


def all_containers(objects: Objects) -> list[dict[str, Any]]:
    return [
        c
        for (kind, _), obj in objects.items()
        if kind in ("Deployment", "Job")
        for c in obj["spec"]["template"]["spec"]["containers"]
    ]


def test_lint_passes_with_default_and_full_values(helm: str) -> None:
    """`helm lint --strict` finds nothing wrong with the default values or with everything on."""
    for extra in ([], ["-f", str(FULL_VALUES)]):
        done = subprocess.run(
            [helm, "lint", "--strict", str(CHART), *extra], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 chart(s) failed" in done.stdout


def test_default_render_is_api_workers_and_migration_only(default: Objects) -> None:
    """Default values render the API and worker Deployments, their Service and config, and the
    migration hook; autoscalers, budgets and the ServiceMonitor stay off."""
    assert set(default) == {
        ("ConfigMap", FULLNAME),
        ("ConfigMap", f"{FULLNAME}-migrate"),
        ("Service", FULLNAME),
        ("Deployment", f"{FULLNAME}-api"),
        ("Deployment", f"{FULLNAME}-worker"),
        ("Job", f"{FULLNAME}-migrate"),
    }
    assert default[("Deployment", f"{FULLNAME}-api")]["spec"]["replicas"] == 2
    assert default[("Deployment", f"{FULLNAME}-worker")]["spec"]["replicas"] == 2


def test_api_pod_runs_gunicorn_and_grpc_on_their_ports(default: Objects, full: Objects) -> None:
    """The API pod runs the REST API under gunicorn on 8080 and the gRPC API on 50051, from the
    image named in the values, and the Service reaches both by port name."""
    api = containers(default, "Deployment", f"{FULLNAME}-api")
    assert set(api) == {"http", "grpc"}
    http, grpc = api["http"], api["grpc"]
    assert http["command"] == ["gunicorn", "-c", "saga_http/gunicorn.conf.py", "saga_http.wsgi:app"]
    assert grpc["command"] == ["python", "-m", "saga_grpc"]
    assert http["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert grpc["ports"] == [{"name": "grpc", "containerPort": 50051, "protocol": "TCP"}]
    assert http["image"] == grpc["image"] == "saga-server:0.1.0"
    full_api = containers(full, "Deployment", f"{FULLNAME}-api")
    assert full_api["http"]["image"] == "registry.internal/saga-server:1.2.3"

    service = default[("Service", FULLNAME)]["spec"]
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["ports"]}
    assert ports == {"http": (8080, "http"), "grpc": (50051, "grpc")}
    pod_labels = default[("Deployment", f"{FULLNAME}-api")]["spec"]["template"]["metadata"]
    assert service["selector"].items() <= pod_labels["labels"].items()
    worker_labels = default[("Deployment", f"{FULLNAME}-worker")]["spec"]["template"]["metadata"]
    assert not service["selector"].items() <= worker_labels["labels"].items()


def test_api_probes_readyz_healthz_and_grpc_health(default: Objects) -> None:
    """REST: readiness on /readyz and liveness on /healthz of the REST port; gRPC: the
    standard gRPC health check on 50051."""
    api = containers(default, "Deployment", f"{FULLNAME}-api")
    http, grpc = api["http"], api["grpc"]
    assert http["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert http["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert grpc["readinessProbe"]["grpc"] == {"port": 50051}
    assert grpc["livenessProbe"]["grpc"] == {"port": 50051}
    # A slow store makes the pod unready first; liveness gives up later than readiness.
    assert (
        http["livenessProbe"]["failureThreshold"] * http["livenessProbe"]["periodSeconds"]
        > http["readinessProbe"]["failureThreshold"] * http["readinessProbe"]["periodSeconds"]
    )


def test_worker_runs_saga_worker_with_a_store_readiness_check(default: Objects) -> None:
    """Workers run `saga worker` on the mounted config, expose no port, and are ready when a
    check of the config and PostgreSQL succeeds; no liveness probe unless one is configured."""
    worker = containers(default, "Deployment", f"{FULLNAME}-worker")
    assert set(worker) == {"worker"}
    w = worker["worker"]
    assert w["command"] == ["saga", "worker", "--config", CONFIG_FILE]
    assert "ports" not in w
    command = w["readinessProbe"]["exec"]["command"]
    assert command[:2] == ["python", "-c"] and "postgres_url" in command[2]
    assert "livenessProbe" not in w


def test_worker_readiness_command_reports_whether_postgres_answers(
    default: Objects, tmp_path: Path
) -> None:
    """The worker's readiness command exits 0 against a reachable PostgreSQL and non-zero when
    nothing listens at the database address."""
    url = require_postgres()
    worker = containers(default, "Deployment", f"{FULLNAME}-worker")["worker"]
    command = [sys.executable, *worker["readinessProbe"]["exec"]["command"][1:]]
    config = tmp_path / "config.yaml"
    config.write_text(default[("ConfigMap", FULLNAME)]["data"]["config.yaml"], encoding="utf-8")

    def probe(database_url: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "CONFIG_PATH": str(config), "DATABASE_URL": database_url}
        return subprocess.run(
            command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=30
        )

    up = probe(url)
    assert up.returncode == 0, up.stderr
    down = probe(f"postgres://saga:saga@127.0.0.1:{free_port()}/saga?connect_timeout=2")
    assert down.returncode != 0


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook(default: Objects) -> None:
    """`saga migrate` runs as a Job hook before install and upgrade, reading the same config
    from a hook ConfigMap created before it (release objects do not exist yet then)."""
    job = default[("Job", f"{FULLNAME}-migrate")]
    notes = job["metadata"]["annotations"]
    assert set(notes["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in notes["helm.sh/hook-delete-policy"]
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    (migrate,) = spec["containers"]
    assert migrate["command"] == ["saga", "migrate", "--config", CONFIG_FILE]

    hook_map = default[("ConfigMap", f"{FULLNAME}-migrate")]
    hook_notes = hook_map["metadata"]["annotations"]
    assert hook_notes["helm.sh/hook"] == notes["helm.sh/hook"]
    assert int(hook_notes["helm.sh/hook-weight"]) < int(notes["helm.sh/hook-weight"])
    assert [v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v] == [
        f"{FULLNAME}-migrate"
    ]
    assert hook_map["data"] == default[("ConfigMap", FULLNAME)]["data"]


@pytest.mark.parametrize("values", ["default", "full"])
def test_rendered_config_loads_with_the_project_loader(
    values: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Every container's config (mounted file plus environment) loads with `workers.config`:
    REST on 0.0.0.0:8080, gRPC on 0.0.0.0:50051, the API not executing, PostgreSQL set."""
    objects: Objects = request.getfixturevalue(values)
    for container in all_containers(objects):
        config = loaded_config(objects, container, tmp_path)
        assert (config.server.host, config.server.port) == ("0.0.0.0", 8080)
        assert (config.grpc.host, config.grpc.port) == ("0.0.0.0", 50051)
        assert config.saga.execute is False
        assert config.postgres_url is not None
        if values == "default":
            assert config.postgres_url == DB_URL
            assert config.kafka is None


def test_secrets_reach_the_config_unchanged_and_never_inline(full: Objects, tmp_path: Path) -> None:
    """The database password and the Kafka SASL credentials come from Secret references and
    arrive in the loaded config exactly as stored, whatever characters they hold; no rendered
    object carries them."""
    for container in all_containers(full):
        refs = {
            item["name"]: (
                item["valueFrom"]["secretKeyRef"]["name"],
                item["valueFrom"]["secretKeyRef"]["key"],
            )
            for item in container["env"]
            if "valueFrom" in item
        }
        assert refs == {
            "DATABASE_PASSWORD": ("saga-postgres", "password"),
            "KAFKA_SASL_USERNAME": ("saga-kafka", "user"),
            "KAFKA_SASL_PASSWORD": ("saga-kafka", "secret"),
        }
        config = loaded_config(full, container, tmp_path)
        assert config.database is not None
        assert (config.database.host, config.database.user) == ("db.internal", "saga")
        assert config.database.password == DB_PASSWORD
        assert config.kafka is not None and config.kafka.sasl is not None
        sasl = config.kafka.sasl
        assert (sasl.mechanism, sasl.username, sasl.password) == (
            "SCRAM-SHA-512",
            "saga-svc",
            "yes",
        )
        assert config.kafka.brokers == ["kafka-1.internal:9093", "kafka-2.internal:9093"]
        assert config.saga.workflow_dir == "/etc/saga/workflows"
    rendered = yaml.safe_dump(list(full.values()))
    assert "s3cret" not in rendered and "p@ss" not in rendered


def test_secret_keys_in_the_config_values_are_refused(helm: str) -> None:
    """A password or SASL block written into `config`, or no PostgreSQL at all, stops rendering
    with a message naming the value to set instead."""
    cases = [
        (
            ["--set", "config.database.host=db", "--set", "config.database.password=x"],
            "config.database.password",
        ),
        (
            ["--set", "config.kafka.brokers={k:9092}", "--set", "config.kafka.sasl.password=x"],
            "config.kafka.sasl",
        ),
        (["--set", "database.existingSecret="], "database.existingSecret"),
    ]
    for args, named in cases:
        done = template(helm, *args)
        assert done.returncode != 0
        assert named in done.stderr, done.stderr


def test_config_or_workflow_change_rolls_the_pods(helm: str, default: Objects) -> None:
    """A different config or workflow file changes the pods' checksum annotation, so the
    Deployments roll (both are read only at start)."""
    for change in (
        ["--set", "config.saga.max_concurrent=7"],
        ["--set-string", "workflows.a\\.yaml=x"],
    ):
        changed = render(helm, *change)
        for name in (f"{FULLNAME}-api", f"{FULLNAME}-worker"):
            before = default[("Deployment", name)]["spec"]["template"]["metadata"]["annotations"]
            after = changed[("Deployment", name)]["spec"]["template"]["metadata"]["annotations"]
            assert before["checksum/config"] != after["checksum/config"], change


def test_hpa_and_pdb_target_their_deployments(full: Objects) -> None:
    """With autoscaling and budgets on, each HPA scales its own Deployment (which then leaves
    replicas to it) and each PDB selects exactly that Deployment's pods."""
    for component, (low, high, cpu) in {"api": (3, 12, 60), "worker": (2, 20, 75)}.items():
        name = f"{FULLNAME}-{component}"
        deployment = full[("Deployment", name)]
        assert "replicas" not in deployment["spec"]
        hpa = full[("HorizontalPodAutoscaler", name)]["spec"]
        assert hpa["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (low, high)
        assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == cpu
        # Utilization is measured against requests, so every container must have one.
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert container["resources"]["requests"]["cpu"]

        selector = full[("PodDisruptionBudget", name)]["spec"]["selector"]["matchLabels"]
        for (kind, other), obj in full.items():
            if kind == "Deployment":
                labels = obj["spec"]["template"]["metadata"]["labels"]
                assert (selector.items() <= labels.items()) == (other == name)
    assert full[("PodDisruptionBudget", f"{FULLNAME}-api")]["spec"] == {
        "minAvailable": 2,
        "selector": full[("PodDisruptionBudget", f"{FULLNAME}-api")]["spec"]["selector"],
    }
    assert full[("PodDisruptionBudget", f"{FULLNAME}-worker")]["spec"]["maxUnavailable"] == 1


def test_service_monitor_scrapes_metrics_on_the_rest_port(full: Objects) -> None:
    """The ServiceMonitor selects the API Service and scrapes /metrics on its REST port."""
    monitor = full[("ServiceMonitor", FULLNAME)]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = full[("Service", FULLNAME)]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["saga"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
    assert port["port"] == 8080
