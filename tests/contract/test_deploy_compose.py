"""`compose.yaml` is a valid Compose file that starts the system in the right order.

- It validates against the Compose Specification schema (``check-jsonschema --builtin-schema
  vendor.compose-spec``, the schema bundled with the tool: no network).
- Every ``depends_on`` waits for a condition; NATS and PostgreSQL have health checks (NATS on
  its JetStream health endpoint), so the services start only against working servers.
- Every ``TTP_*`` variable a service sets is a field of the settings class of the program it
  runs (derived from the pydantic models, so a renamed setting fails here).
- Two workers, the master watching ``./rules`` read-only at ``/rules``, pinned images, files
  that bind mounts name exist, the demo feeder uses the bundled demo events.
- NATS runs ``deploy/nats/nats.conf``, which includes the shipped accounts config mounted
  unchanged beside it; the server gets every role's password, each other service only its own
  role's user, password and inbox prefix, and a missing password stops compose with a message
  naming ``make compose-credentials``. A real nats-server checks (``-t``) and runs that config
  with the passwords ``deploy/compose/make-credentials.sh`` writes, into files git ignores.
- The console: same image, its own NATS role, users mode with a users file that the one-shot
  ``console-users`` writes (its dev login from .env: the one-shot's own script is run here and
  the file it writes holds a working argon2id hash), health checked on its probe port, the UI
  published on the host's loopback only. A real ``ttp-console`` process with compose's own
  environment of it (addresses and paths aside), against a nats-server running compose's NATS
  config, turns ready by compose's health check, lets the dev login in over plain HTTP and
  exits 0 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
import yaml
from nats.aio.client import Client
from nats.errors import NoServersError
from pydantic_settings import BaseSettings

from ttp_console.settings import ConsoleSettings
from ttp_master.settings import MasterSettings
from ttp_runtime.embedded import EmbeddedNats, find_nats_server_binary
from ttp_runtime.nats import ensure_configured_streams
from ttp_runtime.nats_roles import (
    ACCOUNTS_CONFIG,
    ROLES,
    Role,
    RoleCredentials,
    generate_credentials,
    server_environment,
)
from ttp_runtime.settings import ServiceSettings
from ttp_worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
NATS_CONF = REPO / "deploy" / "nats" / "nats.conf"
CREDENTIALS_SCRIPT = REPO / "deploy" / "compose" / "make-credentials.sh"
VENV_BIN = Path(sys.executable).parent
TTP_IMAGE_BUILDERS = {
    "migrate",
    "master",
    "worker",
    "console",
    "console-users",
    "demo",
    "operator",
    "viewer",
}
# The one NATS role each service connects as; services not listed have no NATS credentials.
ROLE_OF_SERVICE: dict[str, Role] = {
    "master": "master",
    "worker": "worker",
    "console": "console",
    "demo": "producer",
    "operator": "operator",
    "viewer": "viewer",
}
MISSING_CREDENTIALS = "run make compose-credentials"
PASSWORD_VARIABLE = re.compile(r"TTP_NATS_PASSWORD_[A-Z0-9_]+")

# The settings class each program reads (ttpctl talks to NATS only: the shared base).
SETTINGS_BY_PROGRAM: dict[str, type[BaseSettings]] = {
    "ttp-master": MasterSettings,
    "ttp-worker": WorkerSettings,
    "ttp-console": ConsoleSettings,
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


def program_of(command: list[str]) -> str:
    """The project program a command runs: itself, or the one an ``sh -c`` script runs."""
    if command[:2] != ["sh", "-c"]:
        return command[0]
    named = {word for word in shlex.split(command[2]) if word in SETTINGS_BY_PROGRAM}
    assert len(named) == 1, f"{command}: a script runs exactly one program"
    return named.pop()


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
        if not ttp_vars or name == "nats":
            # nats-server's TTP_NATS_PASSWORD_* are its config's variables (tested below).
            continue
        command = service.get("command")
        assert isinstance(command, list) and command, f"{name}: set TTP_* but no exec command"
        program = program_of(command)
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


# --------------------------------------------------------------------------------------------
# NATS roles: the shipped accounts config, one role's credentials per service
# --------------------------------------------------------------------------------------------


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host file of each bind mount (named volumes left out)."""
    found = {}
    for volume in service.get("volumes") or []:
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            found[target] = (REPO / source).resolve()
    return found


def required(variable: str) -> str:
    """How compose.yaml must read a password: fail with the fix when it is not set."""
    return f"${{{variable}:?{MISSING_CREDENTIALS}}}"


def test_nats_includes_the_shipped_accounts_config_mounted_unchanged_beside_it(
    services: dict[str, dict[str, Any]],
) -> None:
    nats_service = services["nats"]
    assert nats_service["command"] == ["--config", "/etc/nats/nats.conf"]
    mounts = bind_mounts(nats_service)
    assert mounts["/etc/nats/nats.conf"] == NATS_CONF
    includes = re.findall(r"^\s*include\s+(\S+)\s*$", NATS_CONF.read_text(), re.MULTILINE)
    assert includes == ["./nats_accounts.conf"], "one include, relative to nats.conf"
    # The canonical file itself, not a copy that could drift from it.
    assert mounts["/etc/nats/nats_accounts.conf"] == ACCOUNTS_CONFIG.resolve()


def test_the_server_gets_every_role_password_and_nothing_else(
    services: dict[str, dict[str, Any]],
) -> None:
    # The roles the accounts config reads a password for are exactly the known roles.
    in_config = set(PASSWORD_VARIABLE.findall(ACCOUNTS_CONFIG.read_text()))
    variables = {RoleCredentials(role, "").server_variable for role in ROLES}
    assert in_config == variables
    env = environment(services["nats"])
    assert env == {variable: required(variable) for variable in variables}


def test_each_service_has_only_its_own_role_credentials(
    services: dict[str, dict[str, Any]],
) -> None:
    assert set(ROLE_OF_SERVICE) <= set(services)
    for name, service in services.items():
        if name == "nats":
            continue
        env = environment(service)
        # Every password the service could see, wherever in its definition it is named.
        referenced = set(PASSWORD_VARIABLE.findall(yaml.safe_dump(service)))
        role = ROLE_OF_SERVICE.get(name)
        if role is None:
            assert not referenced, f"{name} needs no NATS credentials, has {referenced}"
            assert not {k for k in env if k.startswith("TTP_NATS_")}, name
            continue
        own = RoleCredentials(role, "")
        assert referenced == {own.server_variable}, f"{name}: {referenced}"
        assert env["TTP_NATS_URL"] == "nats://nats:4222", name
        assert env["TTP_NATS_USER"] == own.user, name
        assert env["TTP_NATS_PASSWORD"] == required(own.server_variable), name
        assert env["TTP_NATS_INBOX_PREFIX"] == own.inbox_prefix, name
        assert "TTP_NATS_TOKEN" not in env and "TTP_NATS_CREDS_FILE" not in env, name
    # The migration talks to PostgreSQL only.
    assert "TTP_NATS_URL" not in environment(services["migrate"])
    # No two services share a role (replicas of one service do).
    assert len(set(ROLE_OF_SERVICE.values())) == len(ROLE_OF_SERVICE)


def test_people_run_ttpctl_with_their_own_role_only_when_asked(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("operator", "viewer"):
        service = services[name]
        assert service["profiles"] == ["ops"], f"{name} must not start with `up`"
        assert service["command"][0] == "ttpctl"
        assert service["restart"] == "no"


def run_credentials_script(tmp_path: Path) -> tuple[dict[str, str], str]:
    """Run make-credentials.sh into `tmp_path`: the variables of the env file it wrote, and
    what it printed."""
    env_file = tmp_path / "compose.env"
    result = subprocess.run(
        [str(CREDENTIALS_SCRIPT)],
        env={
            **os.environ,
            "ENV_FILE": str(env_file),
            "CREDENTIALS_DIR": str(tmp_path / "credentials"),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    return values, result.stdout


def credentials_from_script(tmp_path: Path) -> dict[Role, RoleCredentials]:
    """Run make-credentials.sh into `tmp_path`; the passwords it wrote, by role."""
    values, _ = run_credentials_script(tmp_path)
    return {
        role: RoleCredentials(role, values[RoleCredentials(role, "").server_variable])
        for role in ROLES
    }


def test_the_credentials_script_writes_one_password_per_role_into_ignored_files(
    tmp_path: Path,
) -> None:
    assert CREDENTIALS_SCRIPT.stat().st_mode & 0o111, "make-credentials.sh must be executable"
    first = credentials_from_script(tmp_path)
    passwords = [c.password for c in first.values()]
    assert len(set(passwords)) == len(ROLES), "two roles share a password"
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9]{31,}", p) for p in passwords)
    assert (tmp_path / "compose.env").stat().st_mode & 0o777 == 0o600
    for role, creds in first.items():
        client = tmp_path / "credentials" / f"{role}.env"
        assert client.stat().st_mode & 0o777 == 0o600
        lines = [line for line in client.read_text().splitlines() if not line.startswith("#")]
        assert dict(line.split("=", 1) for line in lines) == creds.client_environment(
            "nats://localhost:4222"
        )
    # Run again: the passwords are kept (running services keep working).
    assert credentials_from_script(tmp_path) == first
    ignored = (REPO / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert {".env", "deploy/compose/credentials/"} <= set(ignored)
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "compose-credentials:\n\tdeploy/compose/make-credentials.sh" in makefile


def compose_nats_config(tmp_path: Path, services: dict[str, dict[str, Any]]) -> Path:
    """The files compose mounts into the NATS container, laid out as there; returns nats.conf.

    The store directory is left to the launcher's flag (nats-server refuses it twice).
    """
    conf_dir = tmp_path / "etc-nats"
    conf_dir.mkdir()
    for target, source in bind_mounts(services["nats"]).items():
        assert Path(target).parent == Path("/etc/nats"), target
        shutil.copyfile(source, conf_dir / Path(target).name)
    conf = conf_dir / "nats.conf"
    conf.write_text(conf.read_text().replace("store_dir: /data", ""))
    return conf


@contextlib.asynccontextmanager
async def compose_nats_as_master(
    tmp_path: Path, services: dict[str, dict[str, Any]]
) -> AsyncIterator[tuple[EmbeddedNats, dict[Role, RoleCredentials], Client]]:
    """A nats-server running compose's NATS config with fresh role passwords, and a client
    connected to it as the master; yields the server, the passwords and that client.

    The client is closed on the way out unless the test already closed it.
    """
    conf = compose_nats_config(tmp_path, services)
    creds = generate_credentials()
    with EmbeddedNats(
        data_dir=tmp_path / "data",
        extra_args=("--config", str(conf)),
        extra_env=server_environment(creds),
    ) as server:
        master = creds["master"]
        client = await nats.connect(
            server.url,
            user=master.user,
            password=master.password,
            inbox_prefix=master.inbox_prefix,
            max_reconnect_attempts=0,
        )
        try:
            yield server, creds, client
        finally:
            if not client.is_closed:
                await client.close()


def config_test(conf: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TTP_NATS_PASSWORD_")}
    return subprocess.run(
        [str(find_nats_server_binary()), "-c", str(conf), "-t"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_compose_nats_config_parses_with_the_passwords_and_not_without_one(
    tmp_path: Path, services: dict[str, dict[str, Any]]
) -> None:
    conf = compose_nats_config(tmp_path, services)
    env = server_environment(credentials_from_script(tmp_path))
    result = config_test(conf, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid" in result.stdout + result.stderr
    missing = dict(env)
    del missing["TTP_NATS_PASSWORD_WORKER"]
    result = config_test(conf, missing)
    assert result.returncode != 0
    assert "TTP_NATS_PASSWORD_WORKER" in result.stderr


async def test_the_compose_nats_config_admits_each_role_by_its_own_password_only(
    tmp_path: Path, services: dict[str, dict[str, Any]]
) -> None:
    async with compose_nats_as_master(tmp_path, services) as (server, creds, master_client):
        await master_client.close()
        refusals = {
            "no credentials": {},
            "another role's password": {"user": "master", "password": creds["worker"].password},
        }

        async def quiet(_: Exception) -> None:
            return None

        for refused, (what, options) in enumerate(refusals.items(), start=1):
            with pytest.raises((NoServersError, nats.errors.Error, OSError)):
                await nats.connect(
                    server.url,
                    allow_reconnect=False,
                    connect_timeout=5,
                    error_cb=quiet,
                    **options,
                )
            # The server refused it, not a client-side check.
            assert server.log_path.read_text().count("authentication error") == refused, what


def test_generated_credentials_suit_the_roles() -> None:
    # Guards the helpers above: one distinct password per role.
    creds = generate_credentials()
    assert set(creds) == set(ROLES)
    assert len({c.password for c in creds.values()}) == len(ROLES)


# --------------------------------------------------------------------------------------------
# The console: users mode with a users file the one-shot console-users writes
# --------------------------------------------------------------------------------------------

CONSOLE_USERS_DIR = "/var/lib/ttp-console"


def volume_at(service: dict[str, Any], target: str) -> tuple[str, list[str]]:
    """The source and the options of the volume ``service`` mounts at ``target``."""
    for volume in service.get("volumes") or []:
        source, mounted, *options = volume.split(":")
        if mounted == target:
            return source, options
    raise AssertionError(f"nothing mounted at {target}")


def test_the_console_runs_with_its_ui_on_the_loopback_and_its_probes_apart(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    console = services["console"]
    assert console["command"] == ["ttp-console"]
    assert "profiles" not in console, "`docker compose up` starts the console"
    env = environment(console)
    ui, health = env["TTP_CONSOLE_PORT"], env["TTP_HTTP_PORT"]
    assert ui != health
    # Only the UI is published, and on the host's loopback only.
    assert console["ports"] == [f"127.0.0.1:{ui}:{ui}"]
    # The health check probes readiness on the probe port (healthcheck.py reads TTP_HTTP_PORT).
    assert console["healthcheck"]["test"] == [
        "CMD",
        "python",
        "/opt/ttp-rulebus/healthcheck.py",
        "/readyz",
    ]
    # The console talks to NATS only: no database, and it waits for a master that is ready.
    assert "TTP_DATABASE_URL" not in env
    assert "postgres" not in console["depends_on"]
    assert console["depends_on"]["master"]["condition"] == "service_healthy"
    assert console["depends_on"]["nats"]["condition"] == "service_healthy"
    # Plain HTTP on one machine: the cookie cannot be Secure, which is why the port is local.
    assert env["TTP_CONSOLE_COOKIE_SECURE"] == "false"
    assert (
        env["TTP_CONSOLE_SESSION_SECRET"]
        == "${CONSOLE_SESSION_SECRET:?run make compose-credentials}"
    )
    assert "console-users" in (compose.get("volumes") or {})


def test_the_console_reads_the_users_file_the_one_shot_writes(
    services: dict[str, dict[str, Any]],
) -> None:
    console, writer = services["console"], services["console-users"]
    env, writer_env = environment(console), environment(writer)
    assert env["TTP_CONSOLE_AUTH"] == "users"
    users_file = Path(env["TTP_CONSOLE_USERS_FILE"])
    assert writer_env["TTP_CONSOLE_USERS_FILE"] == str(users_file)
    assert users_file.parent == Path(CONSOLE_USERS_DIR)
    source, options = volume_at(console, CONSOLE_USERS_DIR)
    assert source == "console-users" and options == ["ro"], "the console only reads it"
    assert volume_at(writer, CONSOLE_USERS_DIR) == ("console-users", [])
    assert console["depends_on"]["console-users"]["condition"] == "service_completed_successfully"
    assert writer["restart"] == "no"
    assert writer["command"][:2] == ["sh", "-c"]
    assert "ttp-console users add" in writer["command"][2]
    assert (
        writer_env["CONSOLE_DEV_PASSWORD"]
        == "${CONSOLE_DEV_PASSWORD:?run make compose-credentials}"
    )
    # The image gives uid 10001 the directory, so a fresh named volume starts writable by it.
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    assert f"chown 10001:10001 /rules {CONSOLE_USERS_DIR}" in dockerfile


def test_the_one_shot_writes_a_private_users_file_with_a_working_dev_login(
    tmp_path: Path, services: dict[str, dict[str, Any]]
) -> None:
    from argon2 import PasswordHasher

    from ttp_console.auth.users_file import read_users

    writer = services["console-users"]
    # Compose turns `$$` into `$` before the container's shell sees the script.
    script = writer["command"][2].replace("$$", "$")
    users_file = tmp_path / "users" / "users.txt"
    users_file.parent.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TTP_")},
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "CONSOLE_DEV_PASSWORD": "pdevonly0123456789",
        "TTP_CONSOLE_USERS_FILE": str(users_file),
    }
    for run in range(2):  # every `up` runs it again: it replaces, never fails on an existing user
        result = subprocess.run(
            ["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, f"run {run}: {result.stdout}{result.stderr}"
        assert "http://127.0.0.1:8090" in result.stdout
        assert "pdevonly0123456789" not in result.stdout + result.stderr, "a password in a log"
    assert users_file.stat().st_mode & 0o777 == 0o600
    (user,) = read_users(users_file).values()
    assert (user.name, user.role) == ("dev", "operator")
    assert PasswordHasher().verify(user.password_hash, "pdevonly0123456789")


def test_the_credentials_script_makes_the_console_secrets_and_prints_the_login(
    tmp_path: Path,
) -> None:
    values, printed = run_credentials_script(tmp_path)
    password, secret = values["CONSOLE_DEV_PASSWORD"], values["CONSOLE_SESSION_SECRET"]
    assert re.fullmatch(r"[A-Za-z0-9]{16,}", password)
    assert re.fullmatch(r"[A-Za-z0-9]{32,}", secret), "the console refuses shorter keys"
    assert "http://127.0.0.1:8090" in printed and "user dev" in printed and password in printed
    again, _ = run_credentials_script(tmp_path)
    assert (again["CONSOLE_DEV_PASSWORD"], again["CONSOLE_SESSION_SECRET"]) == (password, secret)
    assert ConsoleSettings(console_session_secret=secret).console_session_secret is not None


def resolve_compose_variables(value: str, variables: dict[str, str]) -> str:
    """``${NAME}``, ``${NAME:-default}`` and ``${NAME:?message}`` as compose resolves them."""

    def one(match: re.Match[str]) -> str:
        name, kind, rest = match.group(1), match.group(2), match.group(3)
        if variables.get(name):
            return variables[name]
        assert kind != ":?", f"{name} is required: {rest}"
        return rest or ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_the_console_runs_and_turns_ready_with_composes_own_settings(
    tmp_path: Path, services: dict[str, dict[str, Any]]
) -> None:
    # NATS as compose runs it (the shipped accounts config), the streams the master makes.
    async with compose_nats_as_master(tmp_path, services) as (server, creds, master_client):
        small = 64 * 1024 * 1024
        await ensure_configured_streams(
            master_client.jetstream(),
            ServiceSettings(
                events_max_bytes=small,
                tags_max_bytes=small,
                deadletter_max_bytes=small,
                rules_max_bytes=small,
            ),
        )
        await master_client.close()

        # The users file, written by the one-shot's own script.
        users_file = tmp_path / "users.txt"
        password = "pdevonly0123456789"
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("TTP_")}
        base_env["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"
        made = subprocess.run(
            ["sh", "-c", services["console-users"]["command"][2].replace("$$", "$")],
            env={
                **base_env,
                "CONSOLE_DEV_PASSWORD": password,
                "TTP_CONSOLE_USERS_FILE": str(users_file),
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert made.returncode == 0, made.stderr

        # compose.yaml's environment of the console, with this machine's addresses and paths.
        variables = {
            "TTP_NATS_PASSWORD_CONSOLE": creds["console"].password,
            "CONSOLE_SESSION_SECRET": "k" * 64,
        }
        env = {
            key: resolve_compose_variables(value, variables)
            for key, value in environment(services["console"]).items()
        }
        ui_port, health_port = free_port(), free_port()
        env |= {
            "TTP_NATS_URL": server.url,
            "TTP_CONSOLE_HOST": "127.0.0.1",
            "TTP_HTTP_HOST": "127.0.0.1",
            "TTP_CONSOLE_PORT": str(ui_port),
            "TTP_HTTP_PORT": str(health_port),
            "TTP_CONSOLE_USERS_FILE": str(users_file),
        }
        log = (tmp_path / "console.log").open("wb")
        console = subprocess.Popen(
            [str(VENV_BIN / "ttp-console")],
            env={**base_env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            # compose's own health check, as the container runs it.
            (_, script, path) = services["console"]["healthcheck"]["test"][1:]
            healthcheck = [sys.executable, str(REPO / "deploy" / "docker" / Path(script).name)]
            for _ in range(240):
                assert console.poll() is None, (tmp_path / "console.log").read_text()
                probe = subprocess.run(
                    [*healthcheck, path],
                    env={**base_env, "TTP_HTTP_PORT": env["TTP_HTTP_PORT"]},
                    timeout=30,
                    check=False,
                )
                if probe.returncode == 0:
                    break
                await asyncio.sleep(0.25)
            else:
                pytest.fail(f"never ready:\n{(tmp_path / 'console.log').read_text()}")

            # The dev login works over plain HTTP (the cookie is not Secure in compose).
            # unsafe: cookies of an IP address host, which aiohttp refuses otherwise.
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(
                base_url=f"http://127.0.0.1:{ui_port}", cookie_jar=jar
            ) as http:
                async with http.get("/login") as response:
                    assert response.status == 200
                    found = re.search(r'name="csrf_token" value="([^"]+)"', await response.text())
                    assert found is not None
                form = {"username": "dev", "password": password, "csrf_token": found.group(1)}
                async with http.post("/login", data=form, allow_redirects=False) as response:
                    assert response.status == 303, await response.text()
                    assert "secure" not in response.headers["Set-Cookie"].lower()
                async with http.get("/", allow_redirects=False) as response:
                    assert response.status == 200
                    page = await response.text()
                    assert '<span class="user-name">dev</span>' in page
                    assert '<span class="user-role">operator</span>' in page
        finally:
            console.terminate()
            code = console.wait(timeout=30)
            log.close()
        assert code == 0, (tmp_path / "console.log").read_text()
