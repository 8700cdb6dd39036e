"""The master's reading of `Nats-Request-Info`: the caller it names, the role of its account,
and a clean `forbidden` for anything else, hostile headers included (never another error)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ttp_core.contract.control import Endpoint
from ttp_master.caller_identity import (
    MAX_REQUEST_INFO_BYTES,
    REQUEST_INFO_HEADER,
    UNVERIFIED_ACTOR,
    Caller,
    ForbiddenError,
    IdentityPolicy,
    Role,
    parse_request_info,
)

# What nats-server 2.x stamps on a request crossing a `share: true` service import.
SERVER_HEADER = json.dumps(
    {
        "start": "2026-12-06T06:44:29.202919752Z",
        "host": "127.0.0.1",
        "id": 10,
        "acc": "OPERATORS",
        "user": "operator",
        "lang": "python3",
        "ver": "2.16.0",
        "rtt": 313487,
        "server": "ttp-embedded",
        "kind": "Client",
        "client_type": "nats",
    }
)
VERIFIED = IdentityPolicy()


def _header(**info: Any) -> dict[str, str]:
    return {REQUEST_INFO_HEADER: json.dumps(info)}


def test_the_server_header_names_account_and_user() -> None:
    assert parse_request_info(SERVER_HEADER) == ("OPERATORS", "operator")
    caller = VERIFIED.caller({REQUEST_INFO_HEADER: SERVER_HEADER}, server_authenticates=True)
    assert caller == Caller("OPERATORS/operator", Role.OPERATOR, verified=True)


@pytest.mark.parametrize(
    ("account", "role"),
    [
        ("OPERATORS", Role.OPERATOR),
        ("VIEWERS", Role.VIEWER),
        ("CONSOLE", Role.CONSOLE),
        ("ADMIN", Role.ADMIN),
    ],
)
def test_the_role_comes_from_the_account(account: str, role: Role) -> None:
    caller = VERIFIED.caller(_header(acc=account, user="u"), server_authenticates=True)
    assert (caller.actor, caller.role) == (f"{account}/u", role)


def test_an_account_without_a_role_is_refused() -> None:
    with pytest.raises(ForbiddenError, match="'RULEBUS' has no control role"):
        VERIFIED.caller(_header(acc="RULEBUS", user="worker"), server_authenticates=True)
    custom = IdentityPolicy(account_roles={"SOC": Role.OPERATOR})
    assert custom.caller(_header(acc="SOC", user="ann"), server_authenticates=True).role is (
        Role.OPERATOR
    )
    with pytest.raises(ForbiddenError):
        custom.caller(_header(acc="OPERATORS", user="operator"), server_authenticates=True)


HOSTILE = [
    "",
    "not json",
    "{",
    "null",
    "[]",
    '"OPERATORS/operator"',
    "42",
    "{}",
    json.dumps({"acc": "OPERATORS"}),
    json.dumps({"user": "operator"}),
    json.dumps({"acc": 1, "user": "operator"}),
    json.dumps({"acc": "OPERATORS", "user": None}),
    json.dumps({"acc": ["OPERATORS"], "user": "operator"}),
    json.dumps({"acc": {"x": 1}, "user": "operator"}),
    json.dumps({"acc": "", "user": "operator"}),
    json.dumps({"acc": "OPERATORS", "user": ""}),
    json.dumps({"acc": "OPERATORS", "user": "a/b"}),  # would forge a longer actor
    json.dumps({"acc": "OPERATORS/x", "user": "b"}),
    json.dumps({"acc": "OPERATORS", "user": "op erator"}),
    json.dumps({"acc": "OPERATORS", "user": "op\nerator"}),
    json.dumps({"acc": "OPERATORS", "user": "op\x00"}),
    json.dumps({"acc": "OPERATORS", "user": "\ud800"}),
    json.dumps({"acc": "OPERATORS", "user": "opérateur"}),
    json.dumps({"acc": "OPERATORS", "user": "\u202eadmin"}),  # right-to-left override
    json.dumps({"acc": "OPERATORS", "user": "u" * 129}),
    "[" * 100_000,  # deep nesting, beyond the size cap
    "[" * 3000 + "]" * 3000,  # deep nesting within a large cap would recurse
    json.dumps({"acc": "OPERATORS", "user": "operator", "pad": "x" * MAX_REQUEST_INFO_BYTES}),
    '{"acc": "OPERATORS", "user": "operator"' + " " * 10_000_000 + "}",
    "\udcff",
]


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_a_hostile_header_is_refused_cleanly(value: str) -> None:
    with pytest.raises(ForbiddenError) as caught:
        VERIFIED.caller({REQUEST_INFO_HEADER: value}, server_authenticates=True)
    # The refusal never echoes the header (it may be huge, or crafted for the log).
    assert len(str(caught.value)) < 300
    assert "x" * 50 not in str(caught.value)


def test_a_header_that_is_not_text_is_refused() -> None:
    for value in (None, b"{}", 42, {"acc": "ADMIN", "user": "admin"}):
        with pytest.raises(ForbiddenError):
            parse_request_info(value)


def test_a_deeply_nested_header_within_the_cap_is_refused() -> None:
    # RecursionError from the JSON decoder must become a refusal too.
    depth = MAX_REQUEST_INFO_BYTES // 2
    with pytest.raises(ForbiddenError):
        parse_request_info("[" * depth + "]" * depth)


def test_longest_names_are_accepted() -> None:
    nkey = "U" + "A" * 55  # a user's public nkey, as JWT-based accounts name users
    assert parse_request_info(json.dumps({"acc": "A" * 128, "user": nkey})) == ("A" * 128, nkey)


def test_verified_mode_refuses_a_request_without_the_header() -> None:
    for headers in (None, {}, {"nats-request-info": SERVER_HEADER}, {"traceparent": "00-x"}):
        with pytest.raises(ForbiddenError, match=r"docs/security\.md"):
            VERIFIED.caller(headers, server_authenticates=True)


@pytest.mark.parametrize("authenticates", [False, None])
def test_verified_mode_refuses_everything_on_a_server_that_authenticates_nobody(
    authenticates: bool | None,
) -> None:
    with pytest.raises(ForbiddenError, match="could forge"):
        VERIFIED.caller({REQUEST_INFO_HEADER: SERVER_HEADER}, server_authenticates=authenticates)


def test_unverified_mode_serves_a_request_without_header_as_admin() -> None:
    policy = IdentityPolicy(require_verified=False)
    for authenticates in (False, None, True):
        caller = policy.caller(None, server_authenticates=authenticates)
        assert caller == Caller(UNVERIFIED_ACTOR, Role.ADMIN, verified=False)
    # A header, when present, is still used, and still judged.
    with_header = policy.caller({REQUEST_INFO_HEADER: SERVER_HEADER}, server_authenticates=False)
    assert (with_header.actor, with_header.role) == ("OPERATORS/operator", Role.OPERATOR)
    with pytest.raises(ForbiddenError):
        policy.caller({REQUEST_INFO_HEADER: "junk"}, server_authenticates=False)


def test_what_each_role_may_call() -> None:
    viewer = Caller("VIEWERS/viewer", Role.VIEWER, verified=True)
    operator = Caller("OPERATORS/operator", Role.OPERATOR, verified=True)
    admin = Caller("ADMIN/admin", Role.ADMIN, verified=True)
    writes = {Endpoint.STATE_SET, Endpoint.STATE_CLEAR}
    for endpoint in Endpoint:
        for caller in (operator, admin):
            caller.check_endpoint(endpoint)
        if endpoint in writes:
            with pytest.raises(ForbiddenError, match="viewer role"):
                viewer.check_endpoint(endpoint)
        else:
            viewer.check_endpoint(endpoint)
    admin.check_force()
    for caller in (viewer, operator):
        with pytest.raises(ForbiddenError, match="needs the admin role"):
            caller.check_force()


def test_the_console_writes_like_an_operator_and_alone_acts_for_a_user() -> None:
    console = Caller("CONSOLE/console", Role.CONSOLE, verified=True)
    for endpoint in Endpoint:
        console.check_endpoint(endpoint)
    with pytest.raises(ForbiddenError, match="needs the admin role"):
        console.check_force()
    console.check_acting_for()
    others = [
        Caller("VIEWERS/viewer", Role.VIEWER, verified=True),
        Caller("OPERATORS/operator", Role.OPERATOR, verified=True),
        Caller("ADMIN/admin", Role.ADMIN, verified=True),
        # Verified mode off: a request without the header is served as admin, and even a
        # console role that nobody verified may not name a user.
        Caller(UNVERIFIED_ACTOR, Role.ADMIN, verified=False),
        Caller(UNVERIFIED_ACTOR, Role.CONSOLE, verified=False),
    ]
    for caller in others:
        with pytest.raises(ForbiddenError, match="only the console role may name a user"):
            caller.check_acting_for()
