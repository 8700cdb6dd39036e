"""Print ttp-rulebus rule changes and tags (needs only nats-py): see README.md next to it."""

import argparse
import asyncio
import contextlib
import json
import os

import nats
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy


def line(subject: str, body: bytes) -> str | None:
    d = json.loads(body).get("data", {})
    if subject.startswith("ttp.rule.reloaded."):
        what = "deleted" if d.get("deleted") else "reloaded"
    elif subject.startswith("ttp.rule.state."):
        what = f"state={d['state']}"
    elif subject.startswith("ttp.tagged."):
        return "\n".join(
            f"tag {t.get('sub_technique_id') or t['technique_id']} {t['rule_id']} "
            f"{d['source_kind']}/{d['source_id']} conf={t['confidence']}"
            for t in d.get("tags", [])
        )
    else:
        return None  # ttp.ruleset.revision and anything newer: ignored
    return f"rule {d['rule_id']} rev {d['revision']} {what}"


async def main(max_lines: int, seconds: float | None) -> None:
    nc = await nats.connect(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    printed, done = 0, asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        nonlocal printed
        for text in filter(None, (line(msg.subject, msg.data) or "").split("\n")):
            if printed < max_lines:
                print(text, flush=True)
                printed += 1
        if printed >= max_lines:
            done.set()

    # Current state of every rule (last message per subject), then live changes, in order.
    config = ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
    await nc.jetstream().subscribe(
        "ttp.rule.>", stream="TTP_RULES", cb=on_msg, ordered_consumer=True, config=config
    )
    await nc.subscribe("ttp.tagged.>", cb=on_msg)  # live tags only (history: TTP_TAGS)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), seconds)
    await nc.drain()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--max", type=int, default=1_000_000, help="exit after N lines")
    p.add_argument("--seconds", type=float, default=None, help="exit after S seconds")
    args = p.parse_args()
    asyncio.run(main(args.max, args.seconds))
