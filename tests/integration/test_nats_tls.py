"""NATS client TLS against a real nats-server that requires it (certificates made per test).

What each mode proves (docs/operations.md, "TLS"):
- ``TTP_NATS_TLS_CA`` alone: the client verifies the server's certificate against our CA and
  its name (IP or DNS) against the URL's host; without that CA the connection is refused;
- ``TTP_NATS_TLS_CERT`` / ``TTP_NATS_TLS_KEY`` too: the server, configured with
  ``verify: true``, accepts only clients with a certificate from the CA (mutual TLS).
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nats.js.api import StreamConfig

from harness.nats_tls import TlsNats, make_tls_files, tls_nats
from ttp_core.contract import subjects
from ttp_runtime.embedded import EmbeddedNats
from ttp_runtime.nats import connect, drain
from ttp_runtime.nats_roles import ACCOUNTS_CONFIG, generate_credentials, server_environment
from ttp_runtime.settings import ServiceSettings

REPO = Path(__file__).resolve().parents[2]
FIRST_CONNECT_S = 10.0


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TlsNats]:
    with tls_nats(tmp_path, verify=False) as server:
        yield server


@pytest.fixture
def mtls_server(tmp_path: Path) -> Iterator[TlsNats]:
    with tls_nats(tmp_path, verify=True) as server:
        yield server


async def _publish_and_ack(settings: ServiceSettings) -> int:
    """Connect with `settings`, make a stream, publish one message; the ack's sequence."""
    client = await connect(settings, "tls-test", initial_timeout_s=FIRST_CONNECT_S)
    try:
        js = client.jetstream()
        name = f"TLS_{uuid.uuid4().hex[:8].upper()}"
        await js.add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"]))
        ack = await js.publish(f"{name.lower()}.one", b"over tls", timeout=5)
        assert ack.stream == name
        return ack.seq
    finally:
        await drain(client)


@pytest.mark.parametrize(
    ("scheme", "host"),
    [("tls", "127.0.0.1"), ("tls", "localhost"), ("nats", "127.0.0.1")],
    ids=["tls-url-ip", "tls-url-dns-name", "nats-url-server-requires-tls"],
)
async def test_a_client_with_the_ca_verifies_the_server_and_uses_jetstream(
    tls_server: TlsNats, scheme: str, host: str
) -> None:
    settings = ServiceSettings(
        nats_url=f"{scheme}://{host}:{tls_server.server.port}", nats_tls_ca=tls_server.files.ca
    )
    assert await _publish_and_ack(settings) == 1


async def test_a_client_without_the_ca_is_refused_with_a_certificate_error(
    tls_server: TlsNats, caplog: pytest.LogCaptureFixture
) -> None:
    settings = ServiceSettings(nats_url=tls_server.url)
    caplog.set_level(logging.WARNING, logger="ttp_runtime.nats")
    with pytest.raises((TimeoutError, OSError)) as refused:
        await connect(settings, "no-ca", initial_timeout_s=3.0)
    said = str(refused.value) + " ".join(r.getMessage() for r in caplog.records)
    assert "CERTIFICATE_VERIFY_FAILED" in said, said


async def test_a_server_certificate_for_another_name_is_refused_even_from_our_ca(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ttp_runtime.nats")
    with tls_nats(tmp_path, server_names=("nats.elsewhere.test",)) as server:
        settings = ServiceSettings(nats_url=server.url, nats_tls_ca=server.files.ca)
        with pytest.raises((TimeoutError, OSError)) as refused:
            await connect(settings, "wrong-name", initial_timeout_s=3.0)
    said = str(refused.value) + " ".join(r.getMessage() for r in caplog.records)
    assert "IP address mismatch" in said, said


async def test_mutual_tls_refuses_a_client_without_a_certificate(
    mtls_server: TlsNats,
) -> None:
    settings = ServiceSettings(nats_url=mtls_server.url, nats_tls_ca=mtls_server.files.ca)
    with pytest.raises((TimeoutError, OSError)):
        await connect(settings, "no-cert", initial_timeout_s=3.0)
    # TLS 1.3 reports the refusal after the handshake, so the client may see only a lost
    # link; the server's log names the reason.
    server_said = (mtls_server.server.data_dir / "nats-server.log").read_text()
    assert "client didn't provide a certificate" in server_said, server_said[-2000:]


async def test_mutual_tls_admits_a_client_with_its_certificate_and_key(
    mtls_server: TlsNats,
) -> None:
    settings = ServiceSettings(
        nats_url=mtls_server.url,
        nats_tls_ca=mtls_server.files.ca,
        nats_tls_cert=mtls_server.files.client_cert,
        nats_tls_key=mtls_server.files.client_key,
    )
    assert await _publish_and_ack(settings) == 1


async def test_master_and_worker_apply_a_rule_over_mutual_tls_configured_by_environment_alone(
    mtls_server: TlsNats,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from harness.master import install, rule_text, running_master, with_version
    from ttp_master.settings import MasterSettings
    from ttp_worker.bootstrap import Worker
    from ttp_worker.settings import WorkerSettings

    # The NATS side of both services comes from the variables an operator sets, nothing else.
    monkeypatch.setenv("TTP_NATS_URL", mtls_server.url)
    monkeypatch.setenv("TTP_NATS_TLS_CA", str(mtls_server.files.ca))
    monkeypatch.setenv("TTP_NATS_TLS_CERT", str(mtls_server.files.client_cert))
    monkeypatch.setenv("TTP_NATS_TLS_KEY", str(mtls_server.files.client_key))
    rules = tmp_path / "rules"
    rules.mkdir()
    placed = install(rules, ["R0014"])
    master_settings = MasterSettings(
        database_url=database_url,
        rules_dir=rules,
        http_host="127.0.0.1",
        http_port=0,
        debounce_ms=30,
        log_format="console",
    )
    worker = Worker(
        WorkerSettings(
            worker_id="tls-w1", http_host="127.0.0.1", http_port=0, log_format="console"
        ),
        lifters={},
    )

    def held_version() -> int | None:
        compiled = worker.book.current.index.rule("R0014")
        return None if compiled is None else compiled.rule_version

    async with running_master(master_settings):
        task = asyncio.create_task(worker.run(), name="tls-worker")
        try:
            await _until(lambda: worker.state.ready or task.done(), "worker ready", task)
            assert held_version() == 1
            placed["R0014"].write_text(with_version(rule_text("R0014"), 2))
            await _until(lambda: held_version() == 2, "R0014 v2 on the worker", task)
        finally:
            worker.request_stop()
            await asyncio.wait_for(task, 15)
    log = (mtls_server.server.data_dir / "nats-server.log").read_text()
    assert "TLS handshake error" not in log, log[-2000:]


async def _until(condition: Callable[[], bool], what: str, task: asyncio.Task[None]) -> None:
    deadline = asyncio.get_running_loop().time() + 30.0
    while not condition():
        if task.done():
            task.result()
            raise AssertionError(f"worker stopped while waiting for {what}")
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_the_compose_tls_config_with_the_dev_certificates_admits_only_mutual_tls(
    tmp_path: Path,
) -> None:
    # The files compose mounts, run by a real nats-server: the certificate paths point at the
    # script's output, the store directory is the launcher's flag (nats-server refuses it
    # twice), and the accounts file sits beside nats.conf with the passwords in the
    # environment, as in compose.
    certs = tmp_path / "certs"
    subprocess.run(
        [str(REPO / "deploy" / "nats" / "make-dev-certs.sh"), str(certs)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    for name in ("nats.conf", "nats-tls.conf"):
        text = (REPO / "deploy" / "nats" / name).read_text()
        text = text.replace("/etc/nats/tls/", f"{certs}/").replace("store_dir: /data", "")
        (conf_dir / name).write_text(text)
    (conf_dir / ACCOUNTS_CONFIG.name).write_bytes(ACCOUNTS_CONFIG.read_bytes())
    credentials = generate_credentials()
    master = credentials["master"]
    with EmbeddedNats(
        data_dir=tmp_path / "nats",
        extra_args=("--config", str(conf_dir / "nats-tls.conf")),
        extra_env=server_environment(credentials),
    ) as server:
        url = f"tls://localhost:{server.port}"
        mutual = ServiceSettings(
            nats_url=url,
            nats_user=master.user,
            nats_password=master.password,
            nats_inbox_prefix=master.inbox_prefix,
            nats_tls_ca=certs / "ca.pem",
            nats_tls_cert=certs / "client.pem",
            nats_tls_key=certs / "client-key.pem",
        )
        # As the master: the one role that may create TTP_RULES and publish a ruleset summary.
        client = await connect(mutual, "tls-test", initial_timeout_s=FIRST_CONNECT_S)
        try:
            js = client.jetstream()
            await js.add_stream(
                StreamConfig(name=subjects.STREAM_RULES, subjects=[subjects.RULESET_REVISION])
            )
            ack = await js.publish(subjects.RULESET_REVISION, b"over tls", timeout=5)
            assert (ack.stream, ack.seq) == (subjects.STREAM_RULES, 1)
        finally:
            await drain(client)
        with pytest.raises((TimeoutError, OSError)):
            await connect(
                ServiceSettings(nats_url=url, nats_tls_ca=certs / "ca.pem"),
                "no-cert",
                initial_timeout_s=3.0,
            )
        log = (server.data_dir / "nats-server.log").read_text()
    assert "client didn't provide a certificate" in log, log[-2000:]


@pytest.mark.parametrize("scheme", ["tls", "nats"])
async def test_a_client_configured_for_tls_never_talks_in_clear_to_a_server_without_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, scheme: str
) -> None:
    # nats-py by itself would send CONNECT (credentials included) in clear here.
    files = make_tls_files(tmp_path / "pki")
    caplog.set_level(logging.WARNING, logger="ttp_runtime.nats")
    with EmbeddedNats(data_dir=tmp_path / "plain") as plain:
        settings = ServiceSettings(
            nats_url=f"{scheme}://127.0.0.1:{plain.port}",
            nats_tls_ca=files.ca,
            nats_user="ttp",
            nats_password="never-in-clear",
        )
        with pytest.raises(TimeoutError):
            await connect(settings, "downgraded", initial_timeout_s=3.0)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "server does not require it; not connecting in clear" in said, said


def test_ttpctl_publishes_events_over_mutual_tls_from_the_environment(
    mtls_server: TlsNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from ttp_core.contract import subjects
    from ttp_runtime.nats import ensure_streams
    from ttpctl.app import app

    monkeypatch.setenv("TTP_NATS_TLS_CA", str(mtls_server.files.ca))
    monkeypatch.setenv("TTP_NATS_TLS_CERT", str(mtls_server.files.client_cert))
    monkeypatch.setenv("TTP_NATS_TLS_KEY", str(mtls_server.files.client_key))
    settings = ServiceSettings(nats_url=mtls_server.url)

    async def create_streams() -> None:
        client = await connect(settings, "setup", initial_timeout_s=FIRST_CONNECT_S)
        try:
            await ensure_streams(client.jetstream(), 1, 3600, -1, 3600)
        finally:
            await drain(client)

    async def stored_events() -> int:
        client = await connect(settings, "check", initial_timeout_s=FIRST_CONNECT_S)
        try:
            info = await client.jetstream().stream_info(subjects.STREAM_EVENTS)
            return int(info.state.messages)
        finally:
            await drain(client)

    asyncio.run(create_streams())
    events = tmp_path / "events.jsonl"
    demo = (REPO / "services" / "ttpctl" / "demo_events.jsonl").read_text().splitlines()
    events.write_text(demo[0] + "\n")
    result = CliRunner().invoke(
        app, ["events", "publish", str(events), "--nats-url", mtls_server.url]
    )
    assert result.exit_code == 0, result.output
    assert asyncio.run(stored_events()) == 1
