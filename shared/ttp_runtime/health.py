"""The health and metrics HTTP server every service runs (see docs/operations.md).

- ``GET /livez``: 200 whenever the event loop answers. A wedged loop cannot answer, so a
  probe timeout is the failure signal; nothing else is checked, so a broken dependency (NATS,
  PostgreSQL) never gets a healthy process restarted.
- ``GET /readyz``: 200 or 503 with ``{"ready": bool, "reason": str}``, from the service's
  readiness callable (master: leader and caught up; worker: index built from the snapshot).
- ``GET /metrics``: the Prometheus registry in the text format (OpenMetrics when the scraper
  asks for it in ``Accept``).

The server runs on the service's own event loop, so it costs no thread; readiness callables
must therefore be quick and non-blocking (read a flag, do no I/O).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Final, Self

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from ttp_runtime.settings import ServiceSettings

__all__ = ["HealthServer", "Readiness", "ReadinessResult", "local_url"]

_log = logging.getLogger(__name__)

ReadinessResult = bool | tuple[bool, str]
Readiness = Callable[[], ReadinessResult]

_NO_STORE: Final = {"Cache-Control": "no-store"}
_WILDCARDS: Final = frozenset({"0.0.0.0", "", "::"})  # noqa: S104 (naming, not binding)


def local_url(host: str, port: int) -> str:
    """``http://host:port`` of a server bound to ``host``, as reached from this machine.

    A wildcard bind address is reached at 127.0.0.1; an IPv6 address goes in brackets.
    """
    if host in _WILDCARDS:
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class HealthServer:
    """``/livez``, ``/readyz`` and ``/metrics`` over HTTP on ``host``:``port``.

    ``port=0`` binds a free port; :attr:`port` tells which after :meth:`start`. ``readiness``
    returns ``True``/``False`` or ``(ready, reason)``; if it raises, the service is reported
    not ready with the exception as reason (the probe never 500s). Use as ``async with`` or
    call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        readiness: Readiness,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._readiness = readiness
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @classmethod
    def from_settings(
        cls,
        settings: ServiceSettings,
        readiness: Readiness,
        registry: CollectorRegistry = REGISTRY,
    ) -> HealthServer:
        """A server on ``settings.http_host``:``settings.http_port``."""
        return cls(settings.http_host, settings.http_port, readiness, registry)

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0)."""
        if self._port is None:
            raise RuntimeError("HealthServer is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:8080``."""
        return local_url(self._host, self.port)

    @property
    def started(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._runner is not None

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        """Bind and serve. Raises ``OSError`` if the address is taken."""
        if self._runner is not None:
            return
        # No access log: probes hit these endpoints every few seconds and would drown the
        # service's own log lines.
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._requested_port, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        addresses = runner.addresses
        self._port = int(addresses[0][1]) if addresses else self._requested_port
        self._runner = runner
        _log.info("health server listening", extra={"host": self._host, "port": self._port})

    async def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._port = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def check_readiness(self) -> tuple[bool, str]:
        """Evaluate the readiness callable as ``(ready, reason)``; never raises."""
        try:
            result = self._readiness()
        except Exception as exc:
            _log.warning("readiness check failed", exc_info=True)
            return False, f"readiness check failed: {type(exc).__name__}: {exc}"
        if isinstance(result, tuple):
            ready, reason = result
            return bool(ready), str(reason)
        ready = bool(result)
        return ready, "ready" if ready else "not ready"

    async def _livez(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"}, headers=_NO_STORE)

    async def _readyz(self, _request: web.Request) -> web.Response:
        ready, reason = self.check_readiness()
        return web.json_response(
            {"ready": ready, "reason": reason},
            status=200 if ready else 503,
            headers=_NO_STORE,
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(self._registry)
        # content_type with parameters (version, charset) must go in the raw header:
        # aiohttp's content_type argument refuses a charset inside it.
        return web.Response(body=body, headers={"Content-Type": content_type, **_NO_STORE})
