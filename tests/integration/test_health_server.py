"""ttp_runtime.health: /livez, /readyz and /metrics over real HTTP on a free port."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter

from ttp_runtime.health import HealthServer, ReadinessResult
from ttp_runtime.settings import ServiceSettings


async def test_endpoints_and_readiness_flip() -> None:
    registry = CollectorRegistry()
    processed = Counter("ttp_test_events_processed", "Events processed.", registry=registry)
    state: dict[str, ReadinessResult] = {"value": (False, "index not built")}

    server = HealthServer("127.0.0.1", 0, lambda: state["value"], registry=registry)
    await server.start()
    try:
        assert server.port > 0
        async with aiohttp.ClientSession(base_url=server.url) as http:
            async with http.get("/livez") as response:
                assert response.status == 200
                assert await response.json() == {"status": "alive"}

            async with http.get("/readyz") as response:
                assert response.status == 503
                assert await response.json() == {"ready": False, "reason": "index not built"}
                assert response.headers["Cache-Control"] == "no-store"

            state["value"] = (True, "index built at revision 7")
            async with http.get("/readyz") as response:
                assert response.status == 200
                assert await response.json() == {
                    "ready": True,
                    "reason": "index built at revision 7",
                }

            state["value"] = False
            async with http.get("/readyz") as response:
                assert response.status == 503
                assert (await response.json())["reason"] == "not ready"

            processed.inc(3)
            async with http.get("/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                body = await response.text()
            assert "ttp_test_events_processed_total 3.0" in body

            headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
            async with http.get("/metrics", headers=headers) as response:
                assert response.headers["Content-Type"].startswith("application/openmetrics-text")
                assert (await response.text()).rstrip().endswith("# EOF")

            async with http.get("/nothing") as response:
                assert response.status == 404
    finally:
        await server.stop()
    assert not server.started


async def test_failing_readiness_is_a_503_not_a_500() -> None:
    def broken() -> bool:
        raise RuntimeError("lost the lock")

    async with (
        HealthServer("127.0.0.1", 0, broken, registry=CollectorRegistry()) as server,
        aiohttp.ClientSession(base_url=server.url) as http,
        http.get("/readyz") as response,
    ):
        assert response.status == 503
        reason = (await response.json())["reason"]
    assert "RuntimeError: lost the lock" in reason


async def test_stop_releases_the_port_and_default_registry_serves() -> None:
    settings = ServiceSettings(http_host="127.0.0.1", http_port=0)
    server = HealthServer.from_settings(settings, lambda: True)
    await server.start()
    port = server.port
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/metrics") as response:
        # The process-wide default registry has the standard process/platform collectors.
        assert "python_info" in await response.text()
    await server.stop()
    await server.stop()  # idempotent
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port

    # The same port can be bound again right away.
    again = HealthServer("127.0.0.1", port, lambda: True, registry=CollectorRegistry())
    await again.start()
    try:
        assert again.port == port
    finally:
        await again.stop()


async def test_port_in_use_raises() -> None:
    first = HealthServer("127.0.0.1", 0, lambda: True, registry=CollectorRegistry())
    await first.start()
    try:
        second = HealthServer("127.0.0.1", first.port, lambda: True, registry=CollectorRegistry())
        with pytest.raises(OSError, match=r"(?i)address already in use"):
            await second.start()
        assert not second.started
    finally:
        await first.stop()
