"""`compose.yaml` is a valid Compose file that starts the system in the right order.

- It validates against the Compose Specification schema (``check-jsonschema --builtin-schema
  vendor.compose-spec``, the schema bundled with the tool: no network).
- Every ``depends_on`` waits for a condition; NATS and PostgreSQL have health checks (NATS on
  its JetStream health endpoint), so the services start only against working servers.
- Every ``TTP_*`` variable a service sets is a field of the settings class of the program it
  runs (derived from the pydantic models, so a renamed setting fails here).
- Two workers, the master watching ``./rules`` read-only at ``/rules``, pinned images, files
  that bind mounts name exist, the demo feeder uses the bundled demo events.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from ttp_master.settings import MasterSettings
from ttp_runtime.settings import ServiceSettings
from ttp_worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
VENV_BIN = Path(sys.executable).parent
TTP_IMAGE_BUILDERS = {"migrate", "master", "worker", "demo"}

# The settings class each program reads (ttpctl talks to NATS only: the shared base).
SETTINGS_BY_PROGRAM: dict[str, type[BaseSettings]] = {
    "ttp-master": MasterSettings,
    "ttp-worker": WorkerSettings,
    "ttpctl": ServiceSettings,
}


def env_names(settings: type[BaseSettings]) -> set[str]:
    """The environment variable of every field, e.g. ``TTP_NATS_URL``."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    return {f"{prefix}{name}".upper() for name in settings.model_fields}


def tool(name: str) -> Path:
    path = VENV_BIN / name
    if not path.exists():
        pytest.fail(f"{name} is missing from {VENV_BIN}: pip install -e '.[dev]'", pytrace=False)
    return path


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the list form: ["KEY=value", "KEY"]
        return {item.partition("=")[0]: item.partition("=")[2] for item in env}
    return {str(key): str(value) for key, value in env.items()}


def test_compose_file_matches_the_compose_specification() -> None:
    result = subprocess.run(
        [str(tool("check-jsonschema")), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dependency_waits_for_a_condition(services: dict[str, dict[str, Any]]) -> None:
    allowed = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        depends_on = service.get("depends_on")
        if depends_on is None:
            continue
        assert isinstance(depends_on, dict), f"{name}: depends_on must be the long form"
        for dependency, spec in depends_on.items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert spec.get("condition") in allowed, f"{name} -> {dependency}: no condition"
            if "healthcheck" in services[dependency]:
                assert spec["condition"] == "service_healthy", (
                    f"{name} -> {dependency}: it has a health check, wait for it"
                )


def test_the_servers_have_health_checks_and_are_waited_for(
    services: dict[str, dict[str, Any]],
) -> None:
    nats_check = services["nats"]["healthcheck"]["test"]
    assert nats_check[0] == "CMD" and "wget" in nats_check
    assert any("localhost:8222/healthz?js-enabled-only=true" in part for part in nats_check)
    postgres_check = services["postgres"]["healthcheck"]["test"]
    assert "pg_isready" in " ".join(postgres_check)
    master = services["master"]["depends_on"]
    assert master["nats"]["condition"] == "service_healthy"
    assert master["postgres"]["condition"] == "service_healthy"
    assert master["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # The migrate service migrated before the master starts, so the master only checks.
    assert environment(services["master"])["TTP_MIGRATE_AT_START"] == "false"
    assert services["worker"]["depends_on"]["nats"]["condition"] == "service_healthy"


def test_servers_keep_their_data_in_named_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    volumes = set(compose.get("volumes") or {})
    assert "nats-data:/data" in services["nats"]["volumes"]
    assert {"nats-data", "postgres-data"} <= volumes
    # PostgreSQL 18 images keep PGDATA below /var/lib/postgresql (a versioned subdirectory).
    assert "postgres-data:/var/lib/postgresql" in services["postgres"]["volumes"]
    assert services["postgres"]["image"].startswith("postgres:18")
    nats_conf = (REPO / "deploy" / "nats" / "nats.conf").read_text(encoding="utf-8")
    assert "jetstream" in nats_conf and "store_dir: /data" in nats_conf
    assert "http_port: 8222" in nats_conf


def test_every_ttp_variable_is_a_setting_of_the_program_it_configures(
    services: dict[str, dict[str, Any]],
) -> None:
    checked = 0
    for name, service in services.items():
        ttp_vars = {key for key in environment(service) if key.startswith("TTP_")}
        if not ttp_vars:
            continue
        command = service.get("command")
        assert isinstance(command, list) and command, f"{name}: set TTP_* but no exec command"
        program = command[0]
        assert program in SETTINGS_BY_PROGRAM, f"{name}: unexpected program {program}"
        unknown = ttp_vars - env_names(SETTINGS_BY_PROGRAM[program])
        assert not unknown, f"{name} ({program}) sets variables no setting reads: {unknown}"
        checked += len(ttp_vars)
    assert checked >= 10  # the check ran over the real services, not over nothing


def test_settings_names_are_derived_from_the_models() -> None:
    # Guards the helper above: it must see inherited and overridden fields.
    assert {"TTP_NATS_URL", "TTP_DATABASE_URL", "TTP_RULES_DIR"} <= env_names(MasterSettings)
    assert {"TTP_NATS_URL", "TTP_WORKER_ID", "TTP_HTTP_PORT"} <= env_names(WorkerSettings)
    assert "TTP_DATABASE_URL" not in env_names(WorkerSettings)


def test_two_workers_and_a_master_watching_the_rules_read_only(
    services: dict[str, dict[str, Any]],
) -> None:
    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 2
    assert "ports" not in worker, "replicas cannot share published host ports"
    assert "container_name" not in worker
    master = services["master"]
    assert "./rules:/rules:ro" in master["volumes"]
    assert environment(master)["TTP_RULES_DIR"] == "/rules"
    assert master["command"] == ["ttp-master"]
    assert worker["command"] == ["ttp-worker"]
    assert services["migrate"]["command"] == ["ttp-master", "migrate"]
    assert services["migrate"]["restart"] == "no"
    # The ports the services listen on are the ones their health checks probe.
    assert environment(master)["TTP_HTTP_PORT"] == "8080"
    assert environment(worker)["TTP_HTTP_PORT"] == "8081"


def test_the_project_image_is_built_from_the_dockerfile_and_hardened(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in TTP_IMAGE_BUILDERS:
        service = services[name]
        build = service["build"]
        assert (REPO / build["context"] / build["dockerfile"]).resolve() == (
            REPO / "deploy" / "Dockerfile"
        )
        assert service["user"] == "10001:10001"
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag, f"{name}: image {image} has no tag"
        assert tag != "latest", f"{name}: image {image} is not pinned"


def test_optional_profiles(services: dict[str, dict[str, Any]]) -> None:
    demo = services["demo"]
    assert demo["profiles"] == ["demo"]
    assert demo["command"][:3] == ["ttpctl", "events", "publish"]
    demo_file = demo["command"][3]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in demo["volumes"]}
    assert (REPO / mounted[demo_file]).resolve() == (
        REPO / "services" / "ttpctl" / "demo_events.jsonl"
    )
    for name in ("otel-collector", "jaeger"):
        assert services[name]["profiles"] == ["observability"]
    # Services outside a profile never depend on one that is inside a profile.
    for name, service in services.items():
        if "profiles" in service:
            continue
        for dependency in service.get("depends_on") or {}:
            assert "profiles" not in services[dependency], f"{name} -> {dependency}"
    # Traces are exported only when asked: the endpoint defaults to empty (= off).
    for name in ("master", "worker"):
        env = environment(services[name])
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "${OTEL_EXPORTER_OTLP_ENDPOINT:-}"
    collector = yaml.safe_load((REPO / "deploy" / "otel" / "collector.yaml").read_text())
    assert collector["service"]["pipelines"]["traces"]["receivers"] == ["otlp"]


def test_bind_mounted_files_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name}: {source} does not exist"
