"""The shared service lifecycle: which event loop a service runs on, and its exit codes."""

from __future__ import annotations

import asyncio

import pytest

from ttp_runtime.service import event_loop_factory, run_until_signalled


def _run_recording_loop() -> tuple[int, asyncio.AbstractEventLoop]:
    stop = asyncio.Event()
    seen: list[asyncio.AbstractEventLoop] = []

    async def service() -> None:
        seen.append(asyncio.get_running_loop())

    code = run_until_signalled("probe", service, stop, stop.set, grace_s=1.0)
    return code, seen[0]


def test_services_run_on_uvloop_where_it_is_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    code, loop = _run_recording_loop()
    assert code == 0
    assert isinstance(loop, uvloop.Loop)


def test_without_uvloop_the_default_asyncio_loop_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    import ttp_runtime.service as service_module

    monkeypatch.setattr(service_module, "uvloop", None)
    assert event_loop_factory() is None
    code, loop = _run_recording_loop()
    assert code == 0
    assert type(loop).__module__.startswith("asyncio")


def test_a_failing_service_exits_1() -> None:
    stop = asyncio.Event()

    async def service() -> None:
        raise RuntimeError("broken")

    assert run_until_signalled("probe", service, stop, stop.set, grace_s=1.0) == 1
