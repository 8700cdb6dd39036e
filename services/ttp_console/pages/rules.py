"""Rule status (from the master's ``rules.list``), the rule page, and the state controls."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ttp_console.auth.roles import require_operator
from ttp_console.pages.common import console, render, set_flash
from ttp_core.contract import subjects
from ttp_core.contract.control import (
    AuditRequest,
    ErrorCode,
    RuleDetail,
    RuleShowRequest,
    RuleSummary,
    StateClearRequest,
    StateSetRequest,
)
from ttp_core.contract.payloads import RejectionError
from ttp_runtime.control_client import ControlClientError, build_request

__all__ = [
    "ErrorExcerpt",
    "excerpt",
    "parse_duration",
    "rule_page",
    "rules_page",
    "state_clear",
    "state_set",
]

MAX_REJECTED_SHOWN: Final = 25
"""Rejected files whose text is fetched (``rules.show``) for the offending lines."""
SHOW_CONCURRENCY: Final = 4
"""``rules.show`` requests of one page in flight at once: the master answers ``busy`` beyond
its cap of concurrent requests, which every client shares."""
CONTEXT_LINES: Final = 2
MAX_LINE_CHARS: Final = 300
AUDIT_LIMIT: Final = 200
MAX_DURATION: Final = timedelta(days=365)
_DURATION: Final = re.compile(r"(?:(\d{1,4})d)?(?:(\d{1,5})h)?(?:(\d{1,6})m)?")


@dataclass(frozen=True, slots=True)
class ErrorExcerpt:
    """A validation error and the lines of the file around it."""

    error: RejectionError
    lines: list[tuple[int, str, bool]]
    """(line number, text, is the error's line)."""
    caret: str | None
    """Spaces then ``^`` under the error's column, when the column is on the line."""


def excerpt(yaml_text: str | None, errors: list[RejectionError]) -> list[ErrorExcerpt]:
    """Each error with the file's lines around its ``line`` (1-based), when the text is
    known; lines are cut at a few hundred characters."""
    lines = yaml_text.splitlines() if yaml_text else []
    out = []
    for error in errors:
        shown: list[tuple[int, str, bool]] = []
        caret = None
        if lines and 1 <= error.line <= len(lines):
            first = max(1, error.line - CONTEXT_LINES)
            last = min(len(lines), error.line + CONTEXT_LINES)
            for number in range(first, last + 1):
                text = lines[number - 1][:MAX_LINE_CHARS]
                shown.append((number, text, number == error.line))
            if 1 <= error.column <= min(len(lines[error.line - 1]) + 1, MAX_LINE_CHARS):
                caret = " " * (error.column - 1) + "^"
        out.append(ErrorExcerpt(error, shown, caret))
    return out


def parse_duration(text: str) -> timedelta | None:
    """``30m``, ``2h``, ``1d12h``: a positive duration up to a year; empty is None (no
    expiry). Raises ValueError for anything else."""
    text = text.strip().lower().replace(" ", "")
    if not text:
        return None
    match = _DURATION.fullmatch(text)
    if match is None or not any(match.groups()):
        raise ValueError(f"{text[:40]!r} is not a duration such as 30m, 2h or 1d12h")
    days, hours, minutes = (int(g) if g else 0 for g in match.groups())
    value = timedelta(days=days, hours=hours, minutes=minutes)
    if value <= timedelta(0) or value > MAX_DURATION:
        raise ValueError("the duration must be more than 0 and at most 365 days")
    return value


async def rules_page(request: Request) -> Response:
    """``/rules``: every rule's status; operator states with reason, who set them and the
    expiry; rejected files with their located errors and the offending lines."""
    context = console(request)
    try:
        listing = await context.control.rules_list()
    except ControlClientError as exc:
        return render(
            request,
            "rules.html",
            {"error": str(exc), "groups": {}, "rejected": [], "listing": None},
            active_nav="rules",
            status_code=503 if exc.code is ErrorCode.UNAVAILABLE else 502,
        )
    groups: dict[str, list[RuleSummary]] = {"changed": [], "active": [], "external": []}
    rejected: list[RuleSummary] = []
    deleted: list[RuleSummary] = []
    for rule in listing.rules:
        if rule.status == "rejected":
            rejected.append(rule)
        elif rule.status == "deleted":
            deleted.append(rule)
        elif rule.state.state != "enabled":
            groups["changed"].append(rule)
        else:
            groups[rule.status].append(rule)
    texts = await _rejected_texts(request, rejected[:MAX_REJECTED_SHOWN])
    return render(
        request,
        "rules.html",
        {
            "error": None,
            "listing": listing,
            "groups": groups,
            "deleted": deleted,
            "rejected": [
                (rule, excerpt(texts.get(rule.rule_id), rule.errors), rule.rule_id in texts)
                for rule in rejected
            ],
            "rejected_not_fetched": max(0, len(rejected) - MAX_REJECTED_SHOWN),
        },
        active_nav="rules",
    )


async def _rejected_texts(request: Request, rejected: list[RuleSummary]) -> dict[str, str]:
    """The file text of each rejected rule the master can show (a file without a readable
    rule id is listed under its path, which ``rules.show`` cannot take)."""
    control = console(request).control
    slots = asyncio.Semaphore(SHOW_CONCURRENCY)

    async def text(rule_id: str) -> tuple[str, str | None]:
        async with slots:
            try:
                detail = await control.rules_show(RuleShowRequest(rule_id=rule_id))
            except ControlClientError:
                return rule_id, None
        return rule_id, detail.yaml_text

    found = await asyncio.gather(
        *(text(r.rule_id) for r in rejected if subjects.is_token(r.rule_id))
    )
    return {rule_id: value for rule_id, value in found if value is not None}


async def rule_page(request: Request) -> Response:
    """``/rules/{rule_id}``: definition, inline tests, state (and its controls for
    operators), errors with their lines, latest tags, and the audit history."""
    context = console(request)
    rule_id = str(request.path_params["rule_id"])
    if not subjects.is_token(rule_id):
        raise HTTPException(404, "No rule has that id.")
    try:
        detail, audit = await asyncio.gather(
            context.control.rules_show(RuleShowRequest(rule_id=rule_id)),
            context.control.audit(AuditRequest(rule_id=rule_id, limit=AUDIT_LIMIT)),
        )
    except ControlClientError as exc:
        if exc.code is ErrorCode.UNKNOWN_RULE:
            raise HTTPException(404, "The master knows no rule with that id.") from None
        return render(
            request,
            "rule.html",
            {"error": str(exc), "rule_id": rule_id, "detail": None},
            active_nav="rules",
            status_code=503 if exc.code is ErrorCode.UNAVAILABLE else 502,
        )
    return render(
        request,
        "rule.html",
        {
            "error": None,
            "rule_id": rule_id,
            "detail": detail,
            "tests": _inline_tests(detail),
            "emits": _emits(detail),
            "excerpts": excerpt(detail.yaml_text, detail.errors),
            "audit": list(reversed(audit.entries)),
            "tags": context.tags.latest_for_rule(rule_id),
            "now": time.time(),
        },
        active_nav="rules",
    )


def _inline_tests(detail: RuleDetail) -> list[dict[str, Any]]:
    tests = (detail.definition or {}).get("tests")
    if not isinstance(tests, list):
        return []
    return [t for t in tests if isinstance(t, dict)]


def _emits(detail: RuleDetail) -> list[dict[str, Any]]:
    emits = (detail.definition or {}).get("emits")
    if not isinstance(emits, list):
        return []
    return [e for e in emits if isinstance(e, dict)]


# --------------------------------------------------------------------------------------------
# State controls (operators only, acting for the logged-in user)
# --------------------------------------------------------------------------------------------


def _rule_id_of(request: Request) -> str:
    rule_id = str(request.path_params["rule_id"])
    if not subjects.is_token(rule_id):
        raise HTTPException(404, "No rule has that id.")
    return rule_id


def _back(rule_id: str) -> Response:
    return RedirectResponse(f"/rules/{rule_id}", status_code=303)


def _field(form: Any, name: str) -> str:
    """The form's one text value of ``name`` ("" when absent); a field sent twice is refused
    rather than one of its values picked (``action=clip&action=disable`` means nothing)."""
    values = form.getlist(name)
    if len(values) > 1:
        raise ControlClientError(ErrorCode.BAD_REQUEST, f"{name} was sent more than once", name)
    value = values[0] if values else None
    return value if isinstance(value, str) else ""


async def state_set(request: Request) -> Response:
    """POST ``/rules/{rule_id}/state``: ``action`` = disable or clip, ``reason``,
    ``duration`` (empty: no expiry), ``confidence_max`` for clip."""
    user = require_operator(request)
    rule_id = _rule_id_of(request)
    form = await request.form()
    try:
        state = {"disable": "disabled", "clip": "clipped"}.get(_field(form, "action"))
        if state is None:
            raise ControlClientError(ErrorCode.BAD_REQUEST, "choose disable or clip")
        try:
            lasting = parse_duration(_field(form, "duration"))
        except ValueError as exc:
            raise ControlClientError(ErrorCode.BAD_REQUEST, str(exc), "duration") from None
        fields: dict[str, Any] = {
            "rule_id": rule_id,
            "state": state,
            "reason": _field(form, "reason"),
            "actor": user.name,
        }
        if lasting is not None:
            fields["expires_at"] = datetime.now(UTC) + lasting
        if state == "clipped":
            text = _field(form, "confidence_max").strip()
            try:
                fields["confidence_max"] = float(text)
            except ValueError:
                raise ControlClientError(
                    ErrorCode.BAD_REQUEST,
                    f"{text[:20]!r} is not a confidence between 0 and 1",
                    "confidence_max",
                ) from None
        request_model = build_request(StateSetRequest, **fields)
        changed = await console(request).control.state_set(request_model)
    except ControlClientError as exc:
        set_flash(request, "error", f"{rule_id} was not changed: {exc}")
        return _back(rule_id)
    done = {"disabled": "disabled", "clipped": "clipped"}[changed.state.state]
    expiry = changed.state.expires_at
    until = f" until {expiry.astimezone(UTC):%Y-%m-%d %H:%M UTC}" if expiry else ""
    note = "" if changed.changed else " (it already was)"
    set_flash(
        request,
        "ok",
        f"{rule_id} {done}{until}{note}, revision {changed.revision}, for {user.name}.",
    )
    return _back(rule_id)


async def state_clear(request: Request) -> Response:
    """POST ``/rules/{rule_id}/state/clear``: back to enabled, with an optional reason."""
    user = require_operator(request)
    rule_id = _rule_id_of(request)
    form = await request.form()
    try:
        reason = _field(form, "reason").strip()
        fields: dict[str, Any] = {"rule_id": rule_id, "actor": user.name}
        if reason:
            fields["reason"] = reason
        changed = await console(request).control.state_clear(
            build_request(StateClearRequest, **fields)
        )
    except ControlClientError as exc:
        set_flash(request, "error", f"{rule_id} was not cleared: {exc}")
        return _back(rule_id)
    note = "" if changed.changed else " (it already was)"
    set_flash(
        request,
        "ok",
        f"{rule_id} is enabled again{note}, revision {changed.revision}, for {user.name}.",
    )
    return _back(rule_id)
