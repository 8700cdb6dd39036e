"""What the ttpctl control commands print, from result model instances (no NATS)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console
from rich.table import Table

from ttp_core.contract.control import (
    AuditEntry,
    ErrorCode,
    FleetInfo,
    OperatorState,
    RuleDetail,
    RuleSummary,
    StateChanged,
    StateSetRequest,
    WorkerView,
)
from ttp_core.contract.payloads import RejectionError
from ttp_runtime.control_client import ControlClientError, build_request
from ttpctl.control_cli import control_help
from ttpctl.control_output import (
    actor_text,
    age_text,
    audit_table,
    fleet_header,
    fleet_table,
    fleet_verdict,
    json_document,
    rejection_lines,
    rule_detail_lines,
    rules_table,
    span_text,
    state_changed_text,
    state_text,
    states_table,
)
from ttpctl.exit_codes import EXIT_CODES_HELP, ExitCode, exit_code_for

NOW = datetime(2026, 11, 22, 3, 0, 0, tzinfo=UTC)


def render(table: Table) -> str:
    console = Console(width=200, record=True, markup=False, highlight=False)
    console.print(table)
    return console.export_text()


def state(**fields: Any) -> OperatorState:
    return OperatorState(**{"rule_id": "R0031", "state": "enabled", **fields})


def worker(worker_id: str, revision: int = 123, **fields: Any) -> WorkerView:
    values: dict[str, Any] = {
        "worker_id": worker_id,
        "revision": revision,
        "ready": True,
        "lag": max(0, 123 - revision),
        "digest_matches": True,
        "rules": 10,
        "active": 9,
        "external": 1,
        "events_processed": 42,
        "last_seen": NOW - timedelta(seconds=3.1),
        "age_s": 3.1,
        "gone": False,
    }
    values.update(fields)
    return WorkerView(**values)


def fleet(*workers: WorkerView, revision: int = 123, converged: bool | None = None) -> FleetInfo:
    live = [w for w in workers if not w.gone]
    if converged is None:
        converged = bool(live) and all(
            w.ready and w.revision >= revision and w.digest_matches is not False for w in live
        )
    return FleetInfo(
        revision=revision,
        digest="ab" * 32,
        status_interval_s=5.0,
        workers=list(workers),
        converged=converged,
    )


# --------------------------------------------------------------------------------------------
# Exit codes and requests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        (ErrorCode.BAD_REQUEST, 2),
        (ErrorCode.UNKNOWN_RULE, 3),
        (ErrorCode.NOT_LEADER, 4),
        (ErrorCode.UNAVAILABLE, 4),
        (ErrorCode.BUSY, 4),
        (ErrorCode.INTERNAL, 4),
        (ErrorCode.FORBIDDEN, 5),
    ],
)
def test_every_error_code_has_an_exit_code(code: ErrorCode, exit_code: int) -> None:
    assert exit_code_for(code) == exit_code


def test_forbidden_has_an_exit_code_of_its_own() -> None:
    assert ExitCode.FORBIDDEN == 5
    assert [c for c in ExitCode if c.value == 5] == [ExitCode.FORBIDDEN]
    assert "5 forbidden" in EXIT_CODES_HELP


def test_exit_codes_are_documented_in_one_paragraph() -> None:
    for code in ExitCode:
        assert f"{int(code)} " in EXIT_CODES_HELP


def test_control_help_joins_paragraph_lines_and_ends_with_the_exit_codes() -> None:
    def command() -> None:
        """First line
        continues here.

        Second paragraph."""

    assert control_help(command) == (
        f"First line continues here.\n\nSecond paragraph.\n\n{EXIT_CODES_HELP}"
    )


def test_an_invalid_request_is_a_bad_request_naming_the_field() -> None:
    with pytest.raises(ControlClientError) as caught:
        build_request(StateSetRequest, rule_id="R1", state="disabled", reason="  ", actor="me")
    assert caught.value.code is ErrorCode.BAD_REQUEST
    assert caught.value.field == "reason"
    assert str(caught.value) == "reason: must not be blank (field: reason)"
    assert exit_code_for(caught.value.code) == ExitCode.USAGE


def test_a_valid_request_is_built() -> None:
    request = build_request(
        StateSetRequest,
        rule_id="R1",
        state="clipped",
        confidence_max=0.5,
        reason="noisy",
        actor="me",
    )
    assert request.confidence_max == 0.5


# --------------------------------------------------------------------------------------------
# Times
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45, "45s"), (60, "1m"), (725, "12m 5s"), (7140, "1h 59m"), (7200, "2h")],
)
def test_spans(seconds: float, text: str) -> None:
    assert span_text(seconds) == text


def test_ages() -> None:
    assert age_text(3.14) == "3.1 s ago"
    assert age_text(125) == "2m 5s ago"
    assert age_text(-0.2) == "0.0 s ago"


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


def test_state_texts() -> None:
    later = NOW + timedelta(hours=1, minutes=59)
    assert state_text(state(), NOW) == "enabled"
    assert state_text(state(state="disabled"), NOW) == "disabled"
    assert state_text(state(state="clipped", confidence_max=0.5), NOW) == "clipped 0.5"
    assert (
        state_text(state(state="disabled", expires_at=later), NOW)
        == "disabled until 2026-11-22T04:59:00Z (in 1h 59m)"
    )


def test_an_expired_state_shows_as_enabled() -> None:
    expired = state(state="clipped", confidence_max=0.25, expires_at=NOW - timedelta(seconds=1))
    assert state_text(expired, NOW) == "enabled (clipped 0.25 expired 2026-11-22T02:59:59Z)"
    at_expiry = state(state="disabled", expires_at=NOW)
    assert state_text(at_expiry, NOW).startswith("enabled")


def test_state_changed_texts() -> None:
    changed = StateChanged(state=state(state="disabled"), revision=124)
    assert state_changed_text(changed, NOW) == "R0031: disabled; revision 124."
    same = StateChanged(state=state(state="disabled", revision=120), revision=120, changed=False)
    assert state_changed_text(same, NOW) == "R0031: already disabled; nothing changed."


def test_states_table() -> None:
    text = render(
        states_table(
            [
                state(
                    state="disabled",
                    reason="FP storm",
                    set_by="alice",
                    set_at=NOW - timedelta(minutes=5),
                    revision=124,
                )
            ],
            NOW,
        )
    )
    assert "R0031" in text
    assert "FP storm" in text
    assert "alice" in text
    assert "2026-11-22T02:55:00Z" in text
    assert "124" in text
    noted = render(
        states_table(
            [
                state(
                    state="disabled",
                    set_by="OPERATORS/operator",
                    on_behalf_of="alice",
                    set_at=NOW,
                    revision=124,
                )
            ],
            NOW,
        )
    )
    assert "OPERATORS/operator (for alice)" in noted


def test_actor_text_shows_the_verified_actor_then_the_note() -> None:
    assert actor_text("OPERATORS/operator", "alice") == "OPERATORS/operator (for alice)"
    assert actor_text("OPERATORS/operator", None) == "OPERATORS/operator"
    assert actor_text("ttp-master", "") == "ttp-master"
    assert actor_text(None, None) == "-"


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------


def rejected_rule() -> RuleSummary:
    return RuleSummary(
        rule_id="R0099",
        status="rejected",
        source_path="rules/R0099.yaml",
        state=OperatorState(rule_id="R0099", state="enabled"),
        errors=[RejectionError(line=3, column=5, message="unknown field 'matchh'")],
    )


def test_rejection_lines_are_file_line_column_message() -> None:
    assert rejection_lines(rejected_rule()) == ["rules/R0099.yaml:3:5: unknown field 'matchh'"]


def test_rules_table_shows_status_version_effective_state_and_source() -> None:
    active = RuleSummary(
        rule_id="R0031",
        status="active",
        rule_version=3,
        source_path="rules/R0031.yaml",
        state=state(state="disabled", expires_at=NOW - timedelta(minutes=1)),
    )
    text = render(rules_table([active, rejected_rule()], NOW))
    lines = text.splitlines()
    r31 = next(line for line in lines if "R0031" in line)
    assert "active" in r31
    assert " 3 " in r31
    assert "enabled (disabled expired" in r31
    assert "rules/R0031.yaml" in r31
    r99 = next(line for line in lines if "R0099" in line)
    assert "rejected" in r99


def test_rule_detail_lines() -> None:
    detail = RuleDetail(
        rule_id="R0031",
        status="active",
        name="curl piped to shell",
        rule_version=3,
        revision=120,
        source_path="rules/R0031.yaml",
        content_sha256="f" * 64,
        state=state(
            state="clipped",
            confidence_max=0.3,
            reason="investigation",
            set_by="OPERATORS/operator",
            set_at=NOW,
            revision=125,
            on_behalf_of="bob",
        ),
        yaml_text="id: R0031\nname: curl piped to shell\n",
    )
    lines = rule_detail_lines(detail, NOW)
    assert "rule      R0031" in lines
    assert "state     clipped 0.3" in lines
    assert any(
        "reason: investigation; set by OPERATORS/operator (for bob)" in line for line in lines
    )
    assert lines[-3:] == ["definition:", "  id: R0031", "  name: curl piped to shell"]


# --------------------------------------------------------------------------------------------
# Fleet
# --------------------------------------------------------------------------------------------


def test_a_converged_fleet() -> None:
    verdict = fleet_verdict(fleet(worker("w1"), worker("w2")))
    assert verdict.converged
    assert verdict.sentence == "Fleet converged: 2 live workers at revision 123."


def test_gone_workers_are_not_counted() -> None:
    verdict = fleet_verdict(fleet(worker("w1"), worker("w2", revision=100, gone=True)))
    assert verdict.converged
    assert verdict.sentence == (
        "Fleet converged: 1 live worker at revision 123. (1 gone worker not counted)"
    )


def test_a_fleet_that_is_behind_and_not_ready() -> None:
    verdict = fleet_verdict(
        fleet(worker("w1"), worker("w2", revision=120), worker("w3", ready=False))
    )
    assert not verdict.converged
    assert verdict.sentence == "Fleet NOT converged: w2 is 3 revisions behind; w3 not ready."


def test_a_worker_behind_and_not_ready_is_one_clause() -> None:
    verdict = fleet_verdict(fleet(worker("w1", revision=122, ready=False)))
    assert verdict.sentence == "Fleet NOT converged: w1 is 1 revision behind and is not ready."


def test_a_digest_mismatch_at_the_same_revision() -> None:
    verdict = fleet_verdict(fleet(worker("w1", digest_matches=False)))
    assert not verdict.converged
    assert "w1 has a rule index that differs from the master's" in verdict.sentence


def test_no_live_workers() -> None:
    assert fleet_verdict(fleet()).sentence == "No live workers."
    only_gone = fleet_verdict(fleet(worker("w1", gone=True)))
    assert not only_gone.converged
    assert only_gone.sentence == "No live workers."


def test_the_masters_converged_flag_decides_without_a_target() -> None:
    verdict = fleet_verdict(fleet(worker("w1"), converged=False))
    assert not verdict.converged
    assert verdict.sentence.startswith("Fleet NOT converged")


def test_a_target_revision_is_judged_by_readiness_and_revision_only() -> None:
    # Against a target, a worker past it counts; the master's own flag does not matter.
    info = fleet(worker("w1", revision=125), worker("w2", revision=124), converged=False)
    reached = fleet_verdict(info, target=124)
    assert reached.converged
    assert reached.sentence == "Fleet converged: 2 live workers at revisions 124 to 125."
    waiting = fleet_verdict(info, target=125)
    assert not waiting.converged
    assert waiting.sentence == "Fleet NOT converged: w2 is 1 revision behind."


def test_fleet_table_and_header() -> None:
    info = fleet(
        worker("w1"),
        worker("w2", revision=120, ready=False, digest_matches=None, gone=True, age_s=42.0),
    )
    text = render(fleet_table(info.workers))
    w1 = next(line for line in text.splitlines() if line.startswith("w1"))
    assert w1.split() == ["w1", "123", "0", "yes", "ok", "9/10", "42", "3.1", "s", "ago"]
    w2 = next(line for line in text.splitlines() if line.startswith("w2"))
    assert w2.split() == ["w2", "120", "3", "NO", "?", "9/10", "42", "42.0", "s", "ago", "gone"]
    assert fleet_header(info) == (
        "Master at revision 123, digest abababababab…; 2 workers reporting every 5 s."
    )


# --------------------------------------------------------------------------------------------
# Audit and JSON
# --------------------------------------------------------------------------------------------


def test_audit_table_keeps_the_given_order() -> None:
    entries = [
        AuditEntry(
            revision=revision,
            at=NOW + timedelta(minutes=revision),
            rule_id="R0031",
            kind="state",
            actor="alice",
            summary=f"change {revision}",
            data={},
        )
        for revision in (7, 8)
    ]
    text = render(audit_table(entries))
    assert text.index("change 7") < text.index("change 8")
    assert "2026-11-22T03:07:00Z" in text


def test_audit_table_shows_whom_the_actor_acted_for() -> None:
    entry = AuditEntry(
        revision=9,
        at=NOW,
        rule_id="R0031",
        kind="state",
        actor="OPERATORS/operator",
        summary="disabled: noisy",
        data={},
        on_behalf_of="alice",
    )
    assert "OPERATORS/operator (for alice)" in render(audit_table([entry]))


def test_json_document_is_the_model_in_json_mode() -> None:
    info = fleet(worker("w1"))
    assert FleetInfo.model_validate_json(json_document(info)) == info
