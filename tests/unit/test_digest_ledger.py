"""The incrementally kept digest equals the full digest after any sequence of changes."""

from __future__ import annotations

import random

from ttp_core.rules.digest import DigestLedger, ruleset_digest

State = tuple[str, float | None, float | None]


def _full(rules: dict[str, str], states: dict[str, State]) -> str:
    return ruleset_digest(rules.items(), [(r, *s) for r, s in states.items()])


def test_the_empty_ledger_has_the_empty_digest() -> None:
    assert DigestLedger().digest() == ruleset_digest([], [])


def test_random_changes_keep_the_ledger_equal_to_the_full_digest() -> None:
    rng = random.Random(12)
    ids = [f"R{i:04d}" for i in range(60)] + ["a", "Z", "R00", "R0001a"]
    for _ in range(20):
        ledger = DigestLedger()
        rules: dict[str, str] = {}
        states: dict[str, State] = {}
        for _ in range(300):
            rule_id = rng.choice(ids)
            action = rng.randrange(5)
            if action <= 1:
                sha = rng.choice(["0" * 64, "f" * 64, f"{rng.getrandbits(256):064x}"])
                rules[rule_id] = sha
                ledger.put_rule(rule_id, sha)
            elif action == 2:
                rules.pop(rule_id, None)
                ledger.drop_rule(rule_id)
            elif action == 3:
                state: State = (
                    rng.choice(["disabled", "clipped"]),
                    rng.choice([None, 0.5, 0.25]),
                    rng.choice([None, 4102444800.0, 1.5]),
                )
                states[rule_id] = state
                ledger.put_state(rule_id, *state)
            else:
                states.pop(rule_id, None)
                ledger.drop_state(rule_id)
            if rng.random() < 0.3:
                assert ledger.digest() == _full(rules, states)
        assert ledger.digest() == _full(rules, states)
