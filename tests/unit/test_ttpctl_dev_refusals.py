"""ttpctl dev's count of the refusals nats-server logs: this run's complete lines only."""

from __future__ import annotations

from pathlib import Path

from ttpctl.dev_command import RefusalCounter

EARLIER = '[1] [ERR] - "RULEBUS/user:worker" - Publish Violation - Subject "ttp.rule.x"\n'
PUBLISH = '[2] [ERR] - "RULEBUS/user:worker" - Publish Violation - Subject "$JS.API.X"\n'
LOGIN = "[2] [ERR] 127.0.0.1:5 - cid:9 - Authorization Violation\n"
OTHER = "[2] [INF] Server is ready\n"


def test_counts_violations_logged_after_it_started(tmp_path: Path) -> None:
    log = tmp_path / "nats-server.log"
    log.write_text(EARLIER + OTHER)
    counter = RefusalCounter.from_end_of(log)
    assert counter.update() == 0
    with log.open("a") as out:
        out.write(OTHER + PUBLISH + LOGIN + PUBLISH[:20])
    # The unfinished last line counts once it is complete, not before.
    assert counter.update() == 2
    with log.open("a") as out:
        out.write(PUBLISH[20:])
    assert counter.update() == 3
    assert counter.update() == 3


def test_a_missing_log_counts_nothing(tmp_path: Path) -> None:
    counter = RefusalCounter.from_end_of(tmp_path / "absent.log")
    assert counter.update() == 0
