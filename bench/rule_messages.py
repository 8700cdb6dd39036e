"""TTP_RULES messages as the master publishes them, made without a master (benchmark seeding).

Validating 100,000 rule files through a master takes minutes and measures the master; a
worker's cold start only needs the messages in TTP_RULES. Each generated rule is a starter
rule with a new id, name and a unique keyword added as an alternative to every regex and
`in` list (bench/master.py's variation), in the master's normalised form with its canonical
content hash, wrapped in the master's CloudEvents envelope (`ttp-rev-<revision>` as id and
`Nats-Msg-Id`). Only each template goes through the pydantic model; variants are derived
from its normalised form, so 100,000 messages take seconds.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from bench.master import Template, _vary_match

from ttp_core.contract import subjects
from ttp_core.contract.payloads import MASTER_SOURCE, RuleReloaded, envelope
from ttp_core.rules.canonical import canonical_json
from ttp_core.rules.model import Rule

COLD_PREFIX: Final = "COLD-"
MSG_ID_HEADER: Final = "Nats-Msg-Id"
_WORDS: Final = ("amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "harbor")


@dataclass(frozen=True, slots=True)
class RuleMessage:
    subject: str
    body: bytes
    msg_id: str
    rule_id: str
    content_sha256: str


def _normalised_templates(templates: Sequence[Template]) -> list[dict[str, Any]]:
    """Each template through the rule model once, without its inline tests (not published
    by the master for the worker's index, and 10x the body)."""
    out = []
    for template in templates:
        doc = copy.deepcopy(template.doc)
        doc.pop("tests", None)
        out.append(Rule.model_validate(doc).normalised())
    return out


def rule_messages(
    templates: Sequence[Template], start: int, count: int, first_revision: int, seed: int
) -> Iterator[RuleMessage]:
    """`count` `ttp.rule.reloaded.<id>` messages of rules numbered from `start` (ids
    `COLD-<number>`), revisions from `first_revision` up."""
    bases = _normalised_templates(templates)
    rng = random.Random(seed)
    now = datetime.now(UTC)
    # One envelope through the model: the variants reuse its exact shape and key order.
    sample = envelope(
        RuleReloaded(
            rule_id="X", revision=1, rule_version=1, content_sha256="0" * 64, source_path="x",
            rule={},
        ),
        source=MASTER_SOURCE, subject="X", event_id="ttp-rev-1", time=now,
    ).model_dump(mode="json")  # fmt: skip
    for n in range(count):
        i = start + n
        definition = copy.deepcopy(bases[i % len(bases)])
        rule_id = f"{COLD_PREFIX}{i:06d}"
        word = rng.choice(_WORDS)
        definition["rule_id"] = rule_id
        definition["name"] = f"{definition['name']}_{word}_{i}"
        definition["match"] = _vary_match(definition["match"], f"{word}{i:06d}x")
        sha = hashlib.sha256(canonical_json(definition).encode()).hexdigest()
        revision = first_revision + n
        msg_id = f"ttp-rev-{revision}"
        event = dict(sample)
        event["id"] = msg_id
        event["subject"] = rule_id
        event["data"] = {
            **sample["data"],
            "rule_id": rule_id,
            "revision": revision,
            "rule_version": definition["rule_version"],
            "content_sha256": sha,
            "source_path": f"cold/{rule_id}.yaml",
            "rule": definition,
        }
        body = json.dumps(event, separators=(",", ":")).encode()
        yield RuleMessage(subjects.rule_reloaded(rule_id), body, msg_id, rule_id, sha)
