"""`ttpctl tags tail` against a real NATS server.

The tests play the worker: they publish `ttp.tagged.<kind>` messages built with the
contract's models (EventTagged in a CloudEvents envelope) to TTP_TAGS, created as the
services create it. The command reads the product's fixed names, so each test has its own
embedded server (``private_nats``). Replays (``--all``, ``--since``) run in-process; following
live messages and Ctrl-C run the console script as a process, as an operator would.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.client import JetStreamContext
from typer.testing import CliRunner, Result

from harness.bus_messages import tag_data, tagged_message
from ttp_core.contract import subjects
from ttp_core.contract.payloads import EventTagged, TagData, decode
from ttp_runtime.nats import MSG_ID_HEADER, ensure_streams
from ttpctl.app import app

HOUR_S = 3600.0
TIMEOUT_S = 20.0
TTPCTL = Path(sys.executable).parent / "ttpctl"

# (rule_id, technique_id, sub_technique_id)
Emit = tuple[str, str, str | None]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def tag(rule_id: str, technique_id: str, sub_technique_id: str | None) -> TagData:
    return tag_data(technique_id, sub_technique_id, rule_id=rule_id, attack_version="17.1")


def tagged(source_id: str, *emits: Emit, kind: str = "command") -> tuple[str, bytes]:
    """Subject and bytes of the tag message a worker would publish for one event."""
    tags = [tag(*emit) for emit in emits]
    return tagged_message(source_id, tags, kind=kind, revision=7, worker="test-w1")


async def _publish(js: JetStreamContext, messages: list[tuple[str, bytes]]) -> None:
    for subject, payload in messages:
        await js.publish(
            subject,
            payload,
            stream=subjects.STREAM_TAGS,
            headers={MSG_ID_HEADER: str(uuid.uuid4())},
        )


async def _publish_to(url: str, messages: list[tuple[str, bytes]]) -> None:
    nc = await nats.connect(url)
    try:
        await _publish(nc.jetstream(), messages)
    finally:
        await nc.close()


def publish(url: str, messages: list[tuple[str, bytes]]) -> None:
    asyncio.run(_publish_to(url, messages))


def tail(url: str, *args: str) -> Result:
    """Run `ttpctl tags tail ... --nats-url url` in-process (use with --count)."""
    return CliRunner().invoke(
        app, ["tags", "tail", *args, "--nats-url", url], catch_exceptions=False
    )


def source_ids(result: Result) -> list[str]:
    """The source_id of each human-readable output line (its second column)."""
    return [text.split()[1].split("/", 1)[1] for text in result.stdout.splitlines()]


async def _create_streams(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await ensure_streams(nc.jetstream(), 1, HOUR_S, -1, HOUR_S)
    finally:
        await nc.close()


@pytest.fixture
def bus(private_nats: Any) -> Iterator[str]:
    """URL of a NATS server of this test's own on which the product's streams exist."""
    asyncio.run(_create_streams(private_nats.url))
    yield private_nats.url


async def start_tail(url: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(TTPCTL),
        "tags",
        "tail",
        *args,
        "--nats-url",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def wait_until_following(js: JetStreamContext, proc: asyncio.subprocess.Process) -> None:
    """Wait for the tail's consumer to exist, so messages published next are its "new"."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            _out, err = await proc.communicate()
            pytest.fail(f"ttpctl exited early ({proc.returncode}): {err.decode()}")
        info = await js.stream_info(subjects.STREAM_TAGS)
        if info.state.consumer_count >= 1:
            return
        await asyncio.sleep(0.05)
    proc.kill()
    await proc.wait()
    pytest.fail("ttpctl tags tail did not create its consumer in time")


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_technique_filter_matches_the_technique_and_its_sub_techniques(bus: str) -> None:
    publish(
        bus,
        [
            tagged("a-sub-004", ("R0010", "T1059", "T1059.004")),
            tagged("b-other", ("R0014", "T1083", None)),
            tagged("c-parent", ("R0011", "T1059", None)),
            tagged("d-sub-003", ("R0012", "T1059", "T1059.003")),
            tagged("e-sub-004", ("R0013", "T1059", "T1059.004")),
        ],
    )

    parent = tail(bus, "--all", "--technique", "T1059", "--count", "4")
    exact = tail(bus, "--all", "--technique", "t1059.004", "--count", "2")

    assert parent.exit_code == 0, parent.output
    assert source_ids(parent) == ["a-sub-004", "c-parent", "d-sub-003", "e-sub-004"]
    # Sub-techniques are shown as such; the line also names tactic, rule and confidence.
    first = parent.stdout.splitlines()[0].split()
    assert first[2:7] == ["T1059.004", "TA0002", "R0010", "v1", "0.90"]
    assert exact.exit_code == 0, exact.output
    assert source_ids(exact) == ["a-sub-004", "e-sub-004"]


def test_rule_and_kind_filters_combine(bus: str) -> None:
    publish(
        bus,
        [
            tagged("wrong-rule", ("R0010", "T1059", None)),
            tagged("wrong-kind", ("R0014", "T1083", None), kind="http_request"),
            tagged("one-of-two", ("R0010", "T1059", None), ("R0014", "T1083", None)),
            tagged("match", ("R0014", "T1083", None)),
        ],
    )

    result = tail(bus, "--all", "--rule", "R0014", "--kind", "command", "--count", "2")

    assert result.exit_code == 0, result.output
    # Only the matching tag of a message with several is shown.
    assert source_ids(result) == ["one-of-two", "match"]
    assert all(" R0014 " in text for text in result.stdout.splitlines())


def test_json_output_is_one_decodable_object_per_line(bus: str) -> None:
    messages = [
        tagged("j1", ("R0010", "T1059", "T1059.004")),
        tagged("j2", ("R0014", "T1083", None), ("R0010", "T1059", None)),
    ]
    # A producer of a later minor version may add fields: they must not break decoding.
    subject, payload = tagged("j3", ("R0014", "T1083", None))
    extended = json.loads(payload)
    extended["data"]["future_field"] = {"x": 1}
    extended["partitionkey"] = "abc"
    messages.append((subject, json.dumps(extended).encode()))
    publish(bus, messages)

    result = tail(bus, "--all", "--json", "--count", "3")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    decoded = [decode(text, EventTagged) for text in lines]
    assert [event.data.source_id for event in decoded] == ["j1", "j2", "j3"]
    assert decoded[0] == decode(messages[0][1], EventTagged)
    assert [t.technique_id for t in decoded[1].data.tags] == ["T1083", "T1059"]


def test_undecodable_message_is_skipped_with_a_note_on_stderr(bus: str) -> None:
    _subject, good = tagged("good", ("R0010", "T1059", None))
    incomplete = json.loads(good)
    del incomplete["data"]["revision"]
    publish(
        bus,
        [
            (subjects.tagged("command"), b"this is not json"),
            (subjects.tagged("command"), json.dumps(incomplete).encode()),
            (subjects.tagged("command"), good),
        ],
    )

    result = tail(bus, "--all", "--count", "1")

    assert result.exit_code == 0, result.output
    assert source_ids(result) == ["good"]
    notes = result.stderr.splitlines()
    assert len(notes) == 2
    assert notes[0].startswith(
        "ttpctl tags tail: skipped message 1 on ttp.tagged.command:"
        " not a valid ttp.tagged.v1 message"
    )
    assert "skipped message 2 on ttp.tagged.command" in notes[1]
    assert "data.revision: Field required" in notes[1]


def test_since_replays_recent_tags(bus: str) -> None:
    publish(bus, [tagged("recent", ("R0010", "T1059", None))])

    result = tail(bus, "--since", "10m", "--count", "1")

    assert result.exit_code == 0, result.output
    assert source_ids(result) == ["recent"]


def test_conflicting_start_options_are_a_usage_error(bus: str) -> None:
    result = tail(bus, "--all", "--since", "5m")

    assert result.exit_code == 2
    assert "use only one of --since, --all and --new" in result.output


def test_missing_tags_stream_exits_2_and_says_so(private_nats: Any) -> None:
    result = tail(private_nats.url, "--count", "1")

    assert result.exit_code == 2
    assert "stream TTP_TAGS does not exist" in result.stderr


async def test_follows_new_tags_only_and_count_exits(bus: str) -> None:
    nc = await nats.connect(bus)
    try:
        js = nc.jetstream()
        await _publish(js, [tagged("before-start", ("R0010", "T1059", None))])
        proc = await start_tail(bus, "--json", "--count", "2")
        await wait_until_following(js, proc)
        await _publish(js, [tagged(f"live-{n}", ("R0010", "T1059", "T1059.004")) for n in range(3)])
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    finally:
        await nc.close()

    assert proc.returncode == 0, err.decode()
    assert [decode(text, EventTagged).data.source_id for text in out.decode().splitlines()] == [
        "live-0",
        "live-1",
    ]


async def test_ctrl_c_ends_the_tail_cleanly_with_exit_0(bus: str) -> None:
    nc = await nats.connect(bus)
    try:
        js = nc.jetstream()
        proc = await start_tail(bus)
        await wait_until_following(js, proc)
        await _publish(js, [tagged("seen", ("R0014", "T1083", None))])
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT_S)
        proc.send_signal(signal.SIGINT)
        _rest, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    finally:
        await nc.close()

    assert b" command/seen " in first
    assert proc.returncode == 0
    assert b"Traceback" not in err
