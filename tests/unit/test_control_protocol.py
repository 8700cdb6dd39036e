"""The control protocol refuses bad requests with a located, readable error."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ttp_core.contract.control import (
    DEADLINE_HEADER,
    REQUESTS,
    RESULTS,
    Endpoint,
    ErrorCode,
    StateSetRequest,
    format_deadline,
    parse_deadline,
)
from ttp_master.control_service import ControlRequestError, parse_request
from ttp_master.db.queries import describe_change


def _error(endpoint: Endpoint, raw: bytes) -> ControlRequestError:
    with pytest.raises(ControlRequestError) as caught:
        parse_request(endpoint, raw)
    return caught.value


def test_every_endpoint_has_a_request_and_a_result_model() -> None:
    assert set(REQUESTS) == set(Endpoint) == set(RESULTS)


def test_a_valid_clip_request_parses() -> None:
    request = parse_request(
        Endpoint.STATE_SET,
        b'{"rule_id": "R0001", "state": "clipped", "confidence_max": 0.5,'
        b' "reason": " incident ", "actor": "ops", "expires_at": "2030-01-01T00:00:00Z"}',
    )
    assert isinstance(request, StateSetRequest)
    assert request.reason == "incident"
    assert request.expires_at == datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b'{"rule_id": "R1", "state": "disabled", "actor": "a"}', "reason", "required"),
        (b'{"rule_id": "R1", "state": "disabled", "reason": "r", "actor": " "}', "actor", "blank"),
        (b'{"rule_id": "R1", "state": "disabled", "reason": " ", "actor": "a"}', "reason", "blank"),
        (
            b'{"rule_id": "R1", "state": "clipped", "confidence_max": 0,'
            b' "reason": "r", "actor": "a"}',
            "confidence_max",
            "greater than 0",
        ),
        (
            b'{"rule_id": "R1", "state": "clipped", "confidence_max": 1.01,'
            b' "reason": "r", "actor": "a"}',
            "confidence_max",
            "less than or equal to 1",
        ),
        (b'{"rule_id": "a.b", "state": "disabled", "reason": "r", "actor": "a"}', "rule_id", ""),
        (b'{"rule_id": "R1", "state": "paused", "reason": "r", "actor": "a"}', "state", ""),
        (
            b'{"rule_id": "R1", "state": "disabled", "reason": "r", "actor": "a",'
            b' "expires_at": "2030-01-01T00:00:00"}',
            "expires_at",
            "UTC offset",
        ),
        (
            b'{"rule_id": "R1", "state": "disabled", "reason": "r", "actor": "a", "force": 1,'
            b' "extra": true}',
            "extra",
            "not a field",
        ),
    ],
)
def test_a_bad_field_is_named_in_the_error(body: bytes, field: str, words: str) -> None:
    error = _error(Endpoint.STATE_SET, body).error
    assert error.code is ErrorCode.BAD_REQUEST
    assert error.field == field
    assert error.message.startswith(f"{field}: ")
    assert words in error.message


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"rule_id": "R1", "state": "clipped", "reason": "r", "actor": "a"}', "needs"),
        (
            b'{"rule_id": "R1", "state": "disabled", "confidence_max": 0.3,'
            b' "reason": "r", "actor": "a"}',
            "only to 'clipped'",
        ),
        (
            b'{"rule_id": "R1", "state": "enabled", "expires_at": "2030-01-01T00:00:00Z",'
            b' "reason": "r", "actor": "a"}',
            "cannot expire",
        ),
    ],
)
def test_inconsistent_state_requests_are_refused(body: bytes, words: str) -> None:
    error = _error(Endpoint.STATE_SET, body).error
    assert error.code is ErrorCode.BAD_REQUEST
    assert words in error.message


def test_malformed_json_and_empty_bodies() -> None:
    assert _error(Endpoint.STATE_SET, b"{oops").error.code is ErrorCode.BAD_REQUEST
    assert parse_request(Endpoint.FLEET, b"") == REQUESTS[Endpoint.FLEET]()
    assert _error(Endpoint.AUDIT, b'{"limit": 0}').error.field == "limit"


def test_error_codes_map_to_micro_status_numbers() -> None:
    assert {code: code.status for code in ErrorCode} == {
        ErrorCode.BAD_REQUEST: 400,
        ErrorCode.UNKNOWN_RULE: 404,
        ErrorCode.NOT_LEADER: 503,
        ErrorCode.UNAVAILABLE: 503,
        ErrorCode.BUSY: 503,
        ErrorCode.INTERNAL: 500,
        ErrorCode.FORBIDDEN: 403,
    }


def test_actor_is_an_optional_note() -> None:
    # The actor is the caller's verified identity; the body's `actor` is only a note of
    # whom it acts for, so a client may leave it out.
    bare = parse_request(
        Endpoint.STATE_SET, b'{"rule_id": "R1", "state": "disabled", "reason": "r"}'
    )
    assert isinstance(bare, StateSetRequest)
    assert bare.actor is None
    cleared = parse_request(Endpoint.STATE_CLEAR, b'{"rule_id": "R1"}')
    assert cleared.actor is None


def test_audit_summaries_read_as_sentences() -> None:
    assert describe_change("reloaded", {"rule_version": 3, "source_path": "a/R1.yaml"}) == (
        "definition v3 from a/R1.yaml"
    )
    assert describe_change(
        "state", {"state": "clipped", "confidence_max": 0.5, "reason": "incident"}
    ) == ("clipped to 0.5: incident")
    assert describe_change(
        "state",
        {"state": "disabled", "expires_at": "2026-11-22T02:58:02.407185Z", "reason": "noise"},
    ) == ("disabled until 2026-11-22T02:58:02Z: noise")
    assert describe_change("state", {"state": "enabled", "cause": "expired"}) == (
        "enabled (previous state expired)"
    )
    rejected = describe_change(
        "rejected",
        {
            "source_path": "R1.yaml",
            "errors": [
                {"line": 3, "column": 5, "message": "bad regex"},
                {"line": 9, "column": 1, "message": "x"},
            ],
        },
    )
    assert rejected == "rejected R1.yaml:3:5: bad regex (+1 more)"


@pytest.mark.parametrize("text", ["a\\u0000b", "x\\ud800", "\\udfff"])
@pytest.mark.parametrize(
    ("endpoint", "template"),
    [
        (
            Endpoint.STATE_SET,
            '{{"rule_id": "R1", "state": "disabled", "reason": "{t}", "actor": "o"}}',
        ),
        (
            Endpoint.STATE_SET,
            '{{"rule_id": "R1", "state": "disabled", "reason": "r", "actor": "{t}"}}',
        ),
        (Endpoint.STATE_CLEAR, '{{"rule_id": "R1", "actor": "o", "reason": "{t}"}}'),
    ],
)
def test_text_postgresql_cannot_store_is_a_bad_request(
    endpoint: Endpoint, template: str, text: str
) -> None:
    """A NUL or a lone surrogate in free text would fail in PostgreSQL; it fails here (the
    JSON parser already refuses lone surrogates; a NUL is refused by the model)."""
    error = _error(endpoint, template.format(t=text).encode()).error
    assert error.code is ErrorCode.BAD_REQUEST
    if "\\u0000" in text:
        assert error.field in ("reason", "actor")
        assert "NUL character or a lone surrogate" in error.message
    else:
        assert "lone leading surrogate" in error.message or "end of hex escape" in error.message


def test_a_nul_in_a_reason_given_as_python_text_is_refused() -> None:
    with pytest.raises(ValueError, match="NUL character"):
        StateSetRequest(rule_id="R1", state="disabled", reason="a\x00b", actor="ops")
    with pytest.raises(ValueError, match=r"unicode string|lone surrogate"):
        StateSetRequest(rule_id="R1", state="disabled", reason="a\ud800", actor="ops")


@pytest.mark.parametrize("unix_time", [0.0, 1.5, 1_765_000_000.123, 99_999_999_999.999])
def test_a_formatted_deadline_reads_back_to_the_millisecond(unix_time: float) -> None:
    assert parse_deadline(format_deadline(unix_time)) == pytest.approx(unix_time, abs=5e-4)


@pytest.mark.parametrize(
    "text",
    ["", "soon", "nan", "NaN", "inf", "-1", "+1", "1e9", "0x10", "1_000", "1.", ".5", "1.2.3"],
)
def test_a_deadline_header_that_is_no_plain_unix_time_is_refused_with_its_name(
    text: str,
) -> None:
    with pytest.raises(ValueError, match=DEADLINE_HEADER):
        parse_deadline(text)


def test_a_refused_deadline_header_is_shown_cut_short() -> None:
    with pytest.raises(ValueError) as caught:
        parse_deadline("x" * 10_000)
    assert len(str(caught.value)) < 200
