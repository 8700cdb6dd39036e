"""`compose.tls.yaml` turns compose.yaml's NATS into mutual TLS, and every service follows.

- It is a valid Compose file, and each service it changes exists in compose.yaml.
- Every ``TTP_*`` variable it sets is a setting of the program the service runs, the URL is
  ``tls://``, and each TLS file a variable names is mounted into that service.
- NATS runs ``deploy/nats/nats-tls.conf`` (compose.yaml's config plus a ``tls`` block that
  verifies clients), and every certificate path in it is mounted into the NATS container.
- The mounted certificates are the files ``deploy/nats/make-dev-certs.sh`` writes, into a
  directory git ignores. (A real nats-server runs this config in
  tests/integration/test_nats_tls.py.)
- TLS changes the link, not the roles: the override leaves every service's NATS user,
  password and inbox prefix to compose.yaml, and ``nats-server -t`` accepts the merged NATS
  files (nats-tls.conf, nats.conf, the accounts config) with the script's certificates.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from ttp_console.settings import ConsoleSettings
from ttp_master.settings import MasterSettings
from ttp_runtime.embedded import find_nats_server_binary
from ttp_runtime.nats_roles import generate_credentials, server_environment
from ttp_runtime.settings import ServiceSettings
from ttp_worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[2]
OVERRIDE = REPO / "compose.tls.yaml"
NATS_TLS_CONF = REPO / "deploy" / "nats" / "nats-tls.conf"
CERT_SCRIPT = REPO / "deploy" / "nats" / "make-dev-certs.sh"
CERT_DIR = "./deploy/nats/tls/"
SETTINGS_BY_PROGRAM: dict[str, type[BaseSettings]] = {
    "ttp-master": MasterSettings,
    "ttp-worker": WorkerSettings,
    "ttp-console": ConsoleSettings,
    "ttpctl": ServiceSettings,
}


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def override() -> dict[str, dict[str, Any]]:
    services = load(OVERRIDE)["services"]
    assert isinstance(services, dict)
    return services


@pytest.fixture(scope="module")
def base() -> dict[str, dict[str, Any]]:
    services = load(REPO / "compose.yaml")["services"]
    assert isinstance(services, dict)
    return services


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of each bind mount."""
    found = {}
    for volume in service.get("volumes") or []:
        source, target = volume.split(":")[:2]
        found[target] = source
    return found


def test_the_override_matches_the_compose_specification() -> None:
    tool = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(tool), "--builtin-schema", "vendor.compose-spec", str(OVERRIDE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_talks_tls_with_real_settings_and_mounted_files(
    override: dict[str, dict[str, Any]], base: dict[str, dict[str, Any]]
) -> None:
    clients = {name: service for name, service in override.items() if name != "nats"}
    # Every service of compose.yaml that talks to NATS is switched, none is forgotten.
    nats_clients = {
        name
        for name, service in base.items()
        if "TTP_NATS_URL" in (service.get("environment") or {})
        and service["command"] != ["ttp-master", "migrate"]
    }
    assert set(clients) == nats_clients
    for name, service in clients.items():
        program = base[name]["command"][0]
        env = service["environment"]
        prefix = "TTP_"
        known = {f"{prefix}{field}".upper() for field in SETTINGS_BY_PROGRAM[program].model_fields}
        assert set(env) - known == set(), f"{name}: variables no setting reads"
        assert env["TTP_NATS_URL"].startswith("tls://"), name
        mounted = mounts(service)
        for variable in ("TTP_NATS_TLS_CA", "TTP_NATS_TLS_CERT", "TTP_NATS_TLS_KEY"):
            assert env[variable] in mounted, f"{name}: {variable}={env[variable]} not mounted"
            assert mounted[env[variable]].startswith(CERT_DIR)


def test_nats_runs_the_tls_config_that_verifies_clients_with_mounted_certificates(
    override: dict[str, dict[str, Any]],
) -> None:
    nats = override["nats"]
    assert nats["command"] == ["--config", "/etc/nats/nats-tls.conf"]
    mounted = mounts(nats)
    assert (REPO / mounted["/etc/nats/nats-tls.conf"]).resolve() == NATS_TLS_CONF
    conf = NATS_TLS_CONF.read_text(encoding="utf-8")
    # Included relative to itself: compose.yaml mounts nats.conf next to it.
    assert "include ./nats.conf" in conf
    assert re.search(r"^\s*verify:\s*true\s*$", conf, re.MULTILINE)
    paths = re.findall(r"^\s*(?:cert_file|key_file|ca_file):\s*(\S+)\s*$", conf, re.MULTILINE)
    assert len(paths) == 3
    for path in paths:
        assert path in mounted and mounted[path].startswith(CERT_DIR), path


def test_the_mounted_certificates_are_what_the_script_writes_into_an_ignored_directory(
    override: dict[str, dict[str, Any]],
) -> None:
    script = CERT_SCRIPT.read_text(encoding="utf-8")
    assert CERT_SCRIPT.stat().st_mode & 0o111, "make-dev-certs.sh must be executable"
    for service in override.values():
        for source in mounts(service).values():
            if source.startswith(CERT_DIR):
                assert Path(source).name in script, source
    ignored = (REPO / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "deploy/nats/tls/" in ignored, "the development keys must never be committed"


def test_tls_leaves_each_service_its_own_role(override: dict[str, dict[str, Any]]) -> None:
    for name, service in override.items():
        env = service.get("environment") or {}
        credentials = {"TTP_NATS_USER", "TTP_NATS_PASSWORD", "TTP_NATS_INBOX_PREFIX"}
        assert not credentials & set(env), f"{name}: credentials belong to compose.yaml"
        assert not any(k.startswith("TTP_NATS_PASSWORD_") for k in env), name


def test_the_merged_tls_nats_config_parses_with_the_dev_certificates(
    tmp_path: Path, override: dict[str, dict[str, Any]], base: dict[str, dict[str, Any]]
) -> None:
    certs = tmp_path / "certs"
    subprocess.run([str(CERT_SCRIPT), str(certs)], check=True, capture_output=True, timeout=60)
    # Compose merges volumes by target: the override's files beside the base's.
    merged = {**mounts(base["nats"]), **mounts(override["nats"])}
    conf_dir = tmp_path / "etc-nats"
    conf_dir.mkdir()
    for target, source in merged.items():
        if source.startswith(".") and Path(target).parent == Path("/etc/nats"):
            text = (REPO / source).read_text(encoding="utf-8")
            text = text.replace("/etc/nats/tls/", f"{certs}/").replace("store_dir: /data", "")
            (conf_dir / Path(target).name).write_text(text, encoding="utf-8")
        elif source.startswith(CERT_DIR):
            assert (certs / Path(source).name).exists(), source
    assert {"nats-tls.conf", "nats.conf", "nats_accounts.conf"} <= {
        p.name for p in conf_dir.iterdir()
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTP_NATS_PASSWORD_")}
    env |= server_environment(generate_credentials())
    result = subprocess.run(
        [str(find_nats_server_binary()), "-c", str(conf_dir / "nats-tls.conf"), "-t"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
