"""Once `serve_leader` returns, the NATS server holds every subscription of the control service:
a request another connection sends at once reaches it, never "no responders".

The test does not hope to lose a race: the service's connection goes through a gate that
delays its commands as much as TCP allows. Everything the client writes after a PING is held
back until the client writes its next PING (the server reads a connection in order, so a
byte cannot arrive later than that). A confirmation that only relies on a PONG reaching the
client before the subscriptions are in effect then fails every time; one that orders its
PING after the subscriptions passes every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.errors
import pytest

from ttp_core.contract import subjects
from ttp_core.contract.payloads import RulesetRevision
from ttp_master import control_service
from ttp_master.caller_identity import IdentityPolicy
from ttp_master.control_service import ControlService, LeaderTerm
from ttp_master.fleet_tracker import FleetTracker
from ttp_runtime.nats import flush_subscriptions

_PING = b"PING\r\n"


class PingGate:
    """A loopback proxy to a NATS server that, once armed, holds the client's bytes that
    follow a PING until the client's next PING, then sends them ahead of it."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.armed = False
        self._held = bytearray()
        self._holding = False
        self.pings_seen = 0
        self.hold_from_start = False
        """True: once armed, hold from the first byte on, not from the first PING."""
        self.release_at_ping = True
        """False: once holding, hold every later byte, PINGs too (a server that stopped
        answering after the first PING), until `thaw`."""
        self._to_server_writer: asyncio.StreamWriter | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"nats://127.0.0.1:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self._target)
        self._writers += [client_w, server_w]
        for pump in (self._to_server(client_r, server_w), _copy(server_r, client_w)):
            task = asyncio.create_task(pump)
            self._tasks.add(task)

    async def thaw(self) -> None:
        """Stop freezing and disarm: what was held goes to the server now."""
        self.armed = self.hold_from_start = False
        held, self._holding = bytes(self._held), False
        self._held.clear()
        if held and self._to_server_writer is not None:
            self._to_server_writer.write(held)
            await self._to_server_writer.drain()

    async def _to_server(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._to_server_writer = writer
        while data := await reader.read(65536):
            writer.write(self._pass(data))
            await writer.drain()

    def _pass(self, data: bytes) -> bytes:
        """What of `data` goes to the server now; the rest is held."""
        if not self.armed:
            # Disarmed: what was held goes first, in the order it came.
            out, self._holding = bytes(self._held) + data, False
            self._held.clear()
            return out
        out = bytearray()
        if self.hold_from_start:
            self._holding = True
        while (at := data.find(_PING)) >= 0:
            self.pings_seen += 1
            if self._holding and not self.release_at_ping:
                break
            before, data = data[:at], data[at + len(_PING) :]
            if self._holding:
                self._held += before
                out += self._held
                self._held.clear()
            else:
                out += before
            out += _PING
            self._holding = True
        if self._holding:
            self._held += data
        else:
            out += data
        return bytes(out)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


@pytest.fixture
async def gate(nats_url: str) -> AsyncIterator[PingGate]:
    host, port = nats_url.removeprefix("nats://").rsplit(":", 1)
    gate = PingGate(host.rpartition("@")[2], int(port))
    await gate.start()
    try:
        yield gate
    finally:
        await gate.close()


async def test_a_request_right_after_serve_leader_reaches_the_leader(
    gate: PingGate, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    asked = asyncio.Event()

    async def summary() -> RulesetRevision:
        asked.set()
        return RulesetRevision(revision=5, rules=0, active=0, external=0, rejected=0, digest="d")

    # The revision endpoint needs only the summary.
    term = LeaderTerm(repository=None, queries=None, scheduler=None, summary=summary)  # type: ignore[arg-type]
    service_nc = await nats.connect(gate.url, ping_interval=3600)
    client = await nats.connect(nats_url)
    control = ControlService(
        service_nc, FleetTracker(), identity=IdentityPolicy(require_verified=False)
    )
    try:
        gate.armed = True
        with caplog.at_level(logging.WARNING, logger="ttp_master.control_service"):
            await control.serve_leader(term)
        # Registration did not need a retry: its first round trip confirmed the subscriptions.
        assert not [r for r in caplog.records if "not confirmed" in r.getMessage()]
        assert gate.pings_seen >= 1

        request = asyncio.create_task(
            client.request(subjects.control("revision"), b"{}", timeout=30)
        )
        reached = asyncio.create_task(asked.wait())
        done, _ = await asyncio.wait({request, reached}, return_when=asyncio.FIRST_COMPLETED)
        if request in done and isinstance(request.exception(), nats.errors.NoRespondersError):
            pytest.fail("the request found no responders right after serve_leader returned")
        assert reached in done, f"the request ended before reaching the service: {done}"

        # The reply itself is held by the gate until the next PING; let it through.
        gate.armed = False
        await service_nc.flush(timeout=5)
        reply: Any = await request
        assert b'"revision":5' in reply.data
    finally:
        gate.armed = False
        await control.stop()
        await service_nc.close()
        await client.close()


async def test_unconfirmed_subscriptions_are_retried_logged_and_served_once_nats_answers(
    gate: PingGate, nats_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    monkeypatch.setattr(control_service, "REGISTER_FLUSH_TIMEOUT_S", 1)
    term = LeaderTerm(repository=None, queries=None, scheduler=None, summary=_summary)  # type: ignore[arg-type]
    service_nc = await nats.connect(gate.url, ping_interval=3600)
    client = await nats.connect(nats_url)
    control = ControlService(
        service_nc, FleetTracker(), identity=IdentityPolicy(require_verified=False)
    )
    try:
        # The micro service's own first round trip is answered; nothing after it is.
        gate.release_at_ping = False
        gate.armed = True
        with caplog.at_level(logging.WARNING, logger="ttp_master.control_service"):
            await control.serve_leader(term)
        unconfirmed = [r for r in caplog.records if "not confirmed" in r.getMessage()]
        assert [r.attempt for r in unconfirmed] == [1, 2, 3]  # type: ignore[attr-defined]
        assert any(
            r.levelno == logging.ERROR and "unconfirmed" in r.getMessage() for r in caplog.records
        )
        assert control.role == "leader" and control.leading.is_set()

        # The subscriptions were kept: once the server reads them, the leader answers.
        await gate.thaw()
        await flush_subscriptions(service_nc, 5)
        reply = await client.request(subjects.control("revision"), b"{}", timeout=10)
        assert b'"revision":5' in reply.data
    finally:
        await gate.thaw()
        await control.stop()
        await service_nc.close()
        await client.close()


async def _summary() -> RulesetRevision:
    return RulesetRevision(revision=5, rules=0, active=0, external=0, rejected=0, digest="d")


async def test_a_registration_that_times_out_leaves_the_connection_reading(
    gate: PingGate, nats_url: str
) -> None:
    # The micro library's own round trip is never answered (it waits nats-py's 10 s).
    term = LeaderTerm(repository=None, queries=None, scheduler=None, summary=_summary)  # type: ignore[arg-type]
    service_nc = await nats.connect(gate.url, ping_interval=3600)
    control = ControlService(
        service_nc, FleetTracker(), identity=IdentityPolicy(require_verified=False)
    )
    try:
        gate.release_at_ping = False
        gate.armed = True
        gate.hold_from_start = True
        with pytest.raises(nats.errors.FlushTimeoutError):
            await control.serve_leader(term)
        assert not control.leading.is_set()

        # Once the server answers, the late PONG is taken and the client reads on.
        await gate.thaw()
        await flush_subscriptions(service_nc, 5)
    finally:
        await gate.thaw()
        await control.stop()
        await service_nc.close()
