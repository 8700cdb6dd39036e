"""Bring PostgreSQL in line with the rules directory, for some paths or all of them.

The same code serves the startup reconcile, every watcher batch, overflow rescans and the
periodic backstop: read the files, validate them, compare by content hash with what the
database holds, and write only real changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ttp_core.contract.subjects import is_token
from ttp_core.rules.diagnostics import Diagnostic
from ttp_core.rules.validator import RuleValidator, is_rule_file, iter_rule_files
from ttp_master.db.repository import (
    Catalog,
    ChangeSet,
    KnownRule,
    Refusal,
    Rejection,
    RuleDelete,
    RuleRepository,
    RuleUpsert,
)
from ttp_master.validation_pool import FileVerdict, RuleFacts, ValidationPool

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class SyncResult:
    """What one sync changed."""

    upserted: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    unchanged: int = 0
    revisions: list[int] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.revisions)


@dataclass(slots=True)
class _Plan:
    changes: ChangeSet
    result: SyncResult
    new_rules: dict[str, KnownRule]
    new_rejections: dict[str, list[dict[str, object]]]


class RuleSync:
    """Reconciles the rules directory with the repository."""

    def __init__(
        self,
        root: Path,
        validator: RuleValidator,
        repository: RuleRepository,
        pool: ValidationPool | None = None,
    ) -> None:
        """`pool`: shared validation processes (the master keeps one for all its terms);
        without one, this sync starts its own and `close` stops it."""
        self.root = root
        self.validator = validator
        self.repository = repository
        self.catalog = Catalog()
        self._own_pool = pool is None
        self._pool = pool if pool is not None else ValidationPool(validator)
        # rel -> (file text, diagnostics) of valid files whose rule row PostgreSQL refused.
        self._refused: dict[str, tuple[str, tuple[Diagnostic, ...]]] = {}

    def close(self) -> None:
        """Stop the validation processes, if this sync started them."""
        if self._own_pool:
            self._pool.close()

    def _validate(self, rels: list[str]) -> dict[str, FileVerdict]:
        return self._pool.validate(self.root, rels)

    async def load(self) -> None:
        """Read what PostgreSQL holds; call once per leadership term."""
        self.catalog = await self.repository.load_catalog()

    async def sync(
        self,
        paths: Iterable[Path] | None = None,
        *,
        actor: str = "ttp-master",
        trace_headers: dict[str, str] | None = None,
    ) -> SyncResult:
        """Sync `paths` (None: the whole tree) and commit the changes as one batch."""
        wanted = None if paths is None else list(paths)
        plan = await asyncio.to_thread(self._plan, wanted)
        if plan.changes:
            applied = await self.repository.apply_changes(
                plan.changes, actor=actor, trace_headers=trace_headers
            )
            plan.result.revisions = applied.revisions
            for refusal in applied.refused:
                self._refused_by_database(plan, refusal)
            for rule_id, revision in applied.rule_revisions.items():
                known = plan.new_rules[rule_id]
                plan.new_rules[rule_id] = KnownRule(
                    rule_id,
                    known.content_sha256,
                    known.source_path,
                    known.deleted,
                    revision,
                    known.yaml_text,
                )
            # A change PostgreSQL wrote nothing for stays as the catalog knew it (retried by
            # the next sync that looks at its path).
            for rule_id in set(plan.new_rules) - set(applied.rule_revisions):
                del plan.new_rules[rule_id]
        self.catalog.update(plan.new_rules)
        for path in plan.result.cleared:
            self.catalog.rejections.pop(path, None)
        self.catalog.rejections.update(plan.new_rejections)
        return plan.result

    def _refused_by_database(self, plan: _Plan, refusal: Refusal) -> None:
        """The file's rule row was refused and recorded as the file's rejection instead."""
        rel = refusal.source_path
        result = plan.result
        if refusal.rule_id in result.upserted:
            result.upserted.remove(refusal.rule_id)
        if rel in result.cleared:
            result.cleared.remove(rel)
        result.rejected.append(rel)
        diagnostic = refusal.diagnostic
        plan.new_rejections[rel] = [
            {"line": diagnostic.line, "column": diagnostic.column, "message": diagnostic.message}
        ]
        text = plan.new_rules[refusal.rule_id].yaml_text
        if text is not None:
            self._refused[rel] = (text, (diagnostic,))

    def _known_refusal(self, verdict: FileVerdict, rel: str) -> FileVerdict:
        """A valid file PostgreSQL already refused, unchanged since: the same rejection,
        without writing it again (a periodic rescan would otherwise retry it each time)."""
        known = self._refused.get(rel)
        if known is None or not verdict.ok:
            return verdict
        text, diagnostics = known
        if verdict.text != text:
            del self._refused[rel]
            return verdict
        return FileVerdict(verdict.rule, diagnostics, verdict.text, None)

    def _relative(self, path: Path) -> str | None:
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return None
        return rel.as_posix()

    def _candidates(self, paths: list[Path] | None) -> set[str] | None:
        """Relative paths to look at; None when a full scan must not run (root missing)."""
        if paths is not None:
            return {
                rel
                for p in paths
                if is_rule_file(p.name) and (rel := self._relative(p)) is not None
            }
        if not self.root.is_dir():
            _log.warning("rules directory %s is missing; keeping every rule as it is", self.root)
            return None
        candidates = {
            rel for p in iter_rule_files(self.root) if (rel := self._relative(p)) is not None
        }
        candidates.update(k.source_path for k in self.catalog.rules.values() if not k.deleted)
        candidates.update(self.catalog.rejections)
        return candidates

    def _plan(self, paths: list[Path] | None) -> _Plan:
        catalog = self.catalog
        candidates = self._candidates(paths)
        if candidates is None:
            return _Plan(ChangeSet(), SyncResult(), {}, {})
        plan = _Plan(ChangeSet(), SyncResult(), {}, {})
        if paths is not None:
            # A file named by an event (a save, even of the same text) is tried again.
            for rel in candidates:
                self._refused.pop(rel, None)
        changes, result = plan.changes, plan.result
        new_rejections = plan.new_rejections
        claimed: dict[str, str] = {}
        vanished: dict[str, str] = {}
        ordered = sorted(candidates)
        verdicts = self._validate([rel for rel in ordered if self._needs_validation(rel)])
        for rel in ordered:
            path = self.root / rel
            if not path.is_file():
                owner = catalog.owner_of(rel)
                if owner is not None:
                    vanished[owner.rule_id] = rel
                if rel in catalog.rejections:
                    changes.cleared_rejections.append(rel)
                    result.cleared.append(rel)
                continue
            verdict = verdicts.get(rel)
            if verdict is None:
                owner = catalog.owner_of(rel)
                if owner is None:
                    continue  # vanished between the two passes: the next batch sees it
                # Byte-identical to the version in force (a restart, a periodic rescan, a
                # broken file put back): nothing to validate or write.
                claimed[owner.rule_id] = rel
                result.unchanged += 1
                if rel in catalog.rejections:
                    changes.cleared_rejections.append(rel)
                    result.cleared.append(rel)
                continue
            verdict = self._known_refusal(self._claim(verdict, rel, claimed, vanished), rel)
            if not verdict.ok:
                self._reject(verdict, rel, path, changes, result, new_rejections)
                continue
            if rel in catalog.rejections:
                changes.cleared_rejections.append(rel)
                result.cleared.append(rel)
            rule = verdict.rule
            sha = verdict.content_sha256
            assert rule is not None and sha is not None and verdict.text is not None
            claimed[rule.rule_id] = rel
            current = catalog.rules.get(rule.rule_id)
            if (
                current is not None
                and not current.deleted
                and current.content_sha256 == sha
                and current.source_path == rel
            ):
                result.unchanged += 1
                continue
            self._plan_upsert(plan, verdict, rule, sha, rel)
        _plan_deletes(plan, vanished, claimed)
        return plan

    def _plan_upsert(
        self, plan: _Plan, verdict: FileVerdict, rule: RuleFacts, sha: str, rel: str
    ) -> None:
        assert verdict.text is not None
        for warning in verdict.diagnostics:
            # Not a rejection: the rule loads. Typos the field catalogue catches show here.
            _log.warning("rule file accepted with a warning: %s", warning)
        plan.changes.upserts.append(
            RuleUpsert(
                rule_id=rule.rule_id,
                rule_version=rule.rule_version,
                name=rule.name,
                content_sha256=sha,
                definition=rule.definition,
                yaml_text=verdict.text,
                source_path=rel,
                is_external=rule.is_external,
            )
        )
        plan.result.upserted.append(rule.rule_id)
        plan.new_rules[rule.rule_id] = KnownRule(rule.rule_id, sha, rel, False, 0, verdict.text)

    def _needs_validation(self, rel: str) -> bool:
        path = self.root / rel
        if not path.is_file():
            return False
        owner = self.catalog.owner_of(rel)
        return owner is None or owner.yaml_text is None or not _same_text(path, owner.yaml_text)

    def _claim(
        self, verdict: FileVerdict, rel: str, claimed: dict[str, str], vanished: dict[str, str]
    ) -> FileVerdict:
        """Reject a file claiming a rule_id that another existing file already holds."""
        rule_id = verdict.rule_id
        if not verdict.ok or rule_id is None:
            return verdict
        holder = claimed.get(rule_id)
        if holder is None:
            current = self.catalog.rules.get(rule_id)
            if (
                current is not None
                and not current.deleted
                and current.source_path != rel
                and rule_id not in vanished
                and (self.root / current.source_path).is_file()
            ):
                holder = current.source_path
        if holder is None:
            return verdict
        message = f"rule_id {rule_id!r} is already defined by {holder}"
        duplicate = Diagnostic(rel, 1, 1, message, "duplicate-rule-id")
        return FileVerdict(verdict.rule, (*verdict.diagnostics, duplicate), verdict.text, None)

    def _reject(
        self,
        report: FileVerdict,
        rel: str,
        path: Path,
        changes: ChangeSet,
        result: SyncResult,
        new_rejections: dict[str, list[dict[str, object]]],
    ) -> None:
        stem = path.name.rsplit(".", 1)[0][:64]
        rule_id = report.rule_id if report.rule_id and is_token(report.rule_id) else stem
        rejection = Rejection(rel, rule_id, report.errors, report.text)
        rows = rejection.error_rows()
        if self.catalog.rejections.get(rel) == rows:
            return  # same errors as already recorded: nothing new to say
        changes.rejections.append(rejection)
        result.rejected.append(rel)
        new_rejections[rel] = list(rows)
        for error in report.errors:
            _log.warning("rule file rejected: %s", error)


def _plan_deletes(plan: _Plan, vanished: dict[str, str], claimed: dict[str, str]) -> None:
    """Tombstone every rule whose file vanished and that no other file took over."""
    for rule_id, rel in sorted(vanished.items()):
        if rule_id in claimed:
            continue  # moved: the new path's upsert carries the rule on
        plan.changes.deletes.append(RuleDelete(rule_id, rel))
        plan.result.deleted.append(rule_id)
        plan.new_rules[rule_id] = KnownRule(rule_id, "", rel, True, 0)


def _same_text(path: Path, text: str) -> bool:
    try:
        return path.read_bytes().decode("utf-8-sig") == text
    except (OSError, UnicodeDecodeError):
        return False
