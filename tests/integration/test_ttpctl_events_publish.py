"""`ttpctl events publish` against a real NATS server.

The command publishes to the product's fixed names (TTP_EVENTS, ``ttp.event.<kind>``), so
every test gets its own embedded server (``private_nats``) instead of prefixed stream names
on the shared one. The streams are created the way master and workers create them
(:func:`ttp_runtime.nats.ensure_streams`), and what the command stored is read back from the
stream itself, not from the command's own report.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from typer.testing import CliRunner, Result

from ttp_core.contract import subjects
from ttp_core.contract.payloads import HoneypotEvent, encode, envelope
from ttp_runtime.nats import MSG_ID_HEADER, ensure_streams
from ttpctl.app import app

HOUR_S = 3600.0


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def event(source_id: str, kind: str = "command", **payload: Any) -> dict[str, Any]:
    return {
        "source_kind": kind,
        "source_id": source_id,
        "attacker_uuid": None,
        "payload": payload or {"command_text": f"echo {source_id}"},
    }


def line(obj: object) -> str:
    return json.dumps(obj)


def wrapped(obj: dict[str, Any]) -> str:
    """The event as a CloudEvents envelope (the other form workers accept)."""
    data = HoneypotEvent.model_validate(obj)
    return encode(envelope(data, source="tests/ttpctl", subject=data.source_id)).decode()


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{text}\n" for text in lines), encoding="utf-8")
    return path


def publish(url: str, *args: str, stdin: str | None = None) -> Result:
    """Run `ttpctl events publish ... --nats-url url` in-process."""
    return CliRunner().invoke(
        app, ["events", "publish", *args, "--nats-url", url], input=stdin, catch_exceptions=False
    )


async def _create_streams(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await ensure_streams(nc.jetstream(), 1, HOUR_S, -1, HOUR_S)
    finally:
        await nc.close()


async def _stored(url: str) -> list[tuple[str, bytes, str | None]]:
    """Every message TTP_EVENTS holds: (subject, payload, Nats-Msg-Id)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(subjects.STREAM_EVENTS)
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(subjects.STREAM_EVENTS, seq)
            headers = msg.headers or {}
            found.append((msg.subject or "", msg.data or b"", headers.get(MSG_ID_HEADER)))
        return found
    finally:
        await nc.close()


def stored(url: str) -> list[tuple[str, bytes, str | None]]:
    return asyncio.run(_stored(url))


@pytest.fixture
def bus(private_nats: Any) -> Iterator[str]:
    """URL of a NATS server of this test's own on which the product's streams exist."""
    asyncio.run(_create_streams(private_nats.url))
    yield private_nats.url


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"nats://127.0.0.1:{port}"


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_publishes_every_valid_line_and_reports_bad_lines_with_file_and_line(
    bus: str, tmp_path: Path
) -> None:
    good = [event("cmd-1"), event("cmd-2"), event("http-1", "http_request", raw_url="/x")]
    path = write_lines(
        tmp_path / "events.jsonl",
        [
            line(good[0]),  # 1
            "",  # 2: blank lines are not events, and not problems either
            "{not json",  # 3
            wrapped(good[1]),  # 4: a CloudEvents envelope
            line([1, 2]),  # 5
            line({"source_id": "x", "payload": {}}),  # 6
            line(event("bad", kind="has.dot")),  # 7
            line(good[2]),  # 8
        ],
    )

    result = publish(bus, str(path))

    assert result.exit_code == 1, result.output
    problems = result.stderr.splitlines()
    # The reasons are the dead letters' a worker would publish for the same lines.
    assert problems[:4] == [
        f"{path}:3: bad_json: Expecting property name enclosed in double quotes:"
        " line 1 column 2 (char 1)",
        f"{path}:5: not_object: a JSON array",
        f"{path}:6: missing_source_kind: no source_kind",
        f"{path}:7: invalid_source_kind: source_kind 'has.dot' is not a token"
        " [A-Za-z0-9_-]{1,64}",
    ]
    assert "3 published" in result.stdout
    assert "4 line(s) skipped" in result.stdout

    messages = stored(bus)
    assert [subject for subject, _, _ in messages] == [
        "ttp.event.command",
        "ttp.event.command",
        "ttp.event.http_request",
    ]
    lines = path.read_text(encoding="utf-8").splitlines()
    # Published as written: the envelope stays an envelope, the bare event stays bare.
    assert [data.decode() for _, data, _ in messages] == [lines[0], lines[3], lines[7]]
    msg_ids = [msg_id for _, _, msg_id in messages]
    assert all(msg_id and msg_id.startswith("ttpctl-ev-") for msg_id in msg_ids)
    assert len(set(msg_ids)) == 3


def test_all_valid_file_exits_0_with_one_json_summary_on_stdout(bus: str, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "ok.jsonl", [line(event(f"cmd-{n}")) for n in range(50)])

    result = publish(bus, str(path), "--json")

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert summary["published"] == 50
    assert summary["duplicates"] == 0
    assert summary["skipped"] == summary["failed"] == 0
    assert summary["ok"] is True
    assert summary["duplicate_window_s"] == 120.0
    assert len(stored(bus)) == 50


def test_republishing_the_same_events_is_deduplicated_by_the_stream(
    bus: str, tmp_path: Path
) -> None:
    events = [event(f"cmd-{n}") for n in range(20)]
    first = write_lines(tmp_path / "first.jsonl", [line(e) for e in events])
    # The same events again, spelled differently: other key order, indented, some wrapped.
    again = write_lines(
        tmp_path / "again.jsonl",
        [
            wrapped(e) if n % 2 else json.dumps(dict(reversed(list(e.items()))), indent=None)
            for n, e in enumerate(events)
        ],
    )

    assert publish(bus, str(first)).exit_code == 0
    rerun = publish(bus, str(first), "--json")
    respelled = publish(bus, str(again), "--json")

    assert rerun.exit_code == 0, rerun.output
    summary = json.loads(rerun.stdout)
    assert (summary["published"], summary["duplicates"], summary["ok"]) == (0, 20, True)
    assert respelled.exit_code == 0, respelled.output
    assert json.loads(respelled.stdout)["duplicates"] == 20
    assert len(stored(bus)) == 20

    # A changed event is a new message, even with the same source_id.
    changed = write_lines(tmp_path / "changed.jsonl", [line(event("cmd-0", command_text="id"))])
    assert json.loads(publish(bus, str(changed), "--json").stdout)["published"] == 1
    assert len(stored(bus)) == 21


def test_dash_reads_events_from_stdin(bus: str) -> None:
    text = "".join(f"{line(event(f'in-{n}'))}\n" for n in range(5)) + "[]\n"

    result = publish(bus, "-", stdin=text)

    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == ["<stdin>:6: not_object: a JSON array"]
    assert [json.loads(data)["source_id"] for _, data, _ in stored(bus)] == [
        f"in-{n}" for n in range(5)
    ]


def test_last_line_without_newline_and_crlf_endings_are_events(bus: str, tmp_path: Path) -> None:
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(f"{line(event('a'))}\r\n{line(event('b'))}".encode())

    result = publish(bus, str(path))

    assert result.exit_code == 0, result.output
    assert len(stored(bus)) == 2


def test_missing_events_stream_exits_2_and_says_so(private_nats: Any, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "events.jsonl", [line(event("cmd-1"))])

    result = publish(private_nats.url, str(path))

    assert result.exit_code == 2
    assert "stream TTP_EVENTS does not exist" in result.stderr
    assert "Traceback" not in result.output


def test_missing_file_exits_2(bus: str, tmp_path: Path) -> None:
    result = publish(bus, str(tmp_path / "nope.jsonl"))

    assert result.exit_code == 2
    assert (
        result.stderr.strip() == f"ttpctl events publish: {tmp_path / 'nope.jsonl'}: no such file"
    )


def test_unreachable_nats_exits_2_with_a_message(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "events.jsonl", [line(event("cmd-1"))])

    result = publish(closed_port_url(), str(path))

    assert result.exit_code == 2
    assert "cannot connect to NATS at 127.0.0.1:" in result.stderr
    assert "Traceback" not in result.output
