"""How full a JetStream stream is, against the limits its configuration sets.

Every stream of ttp-rulebus discards *new* messages at its limit (see
:func:`ttp_runtime.nats.stream_configs`), so a full stream refuses publishes instead of
dropping data. These helpers turn a stream's info into what probes and metrics report.
"""

from __future__ import annotations

from typing import Final

from nats.js.api import StreamInfo

__all__ = ["ROOM_BYTES", "has_room", "usage"]

ROOM_BYTES: Final = 64 * 1024
"""Free bytes below which a size-limited stream counts as full: room for a few messages of
any size ttp-rulebus publishes (a tenth of the limit for limits smaller than 640 KiB)."""


def usage(info: StreamInfo) -> float:
    """The fuller of bytes/max_bytes and messages/max_msgs, 0.0 when the stream is unlimited."""
    config, state = info.config, info.state
    ratios = [0.0]
    if config.max_bytes is not None and config.max_bytes > 0:
        ratios.append(state.bytes / config.max_bytes)
    if config.max_msgs is not None and config.max_msgs > 0:
        ratios.append(state.messages / config.max_msgs)
    return max(ratios)


def has_room(info: StreamInfo) -> bool:
    """False when the stream is at its size or message limit (new messages are refused)."""
    config, state = info.config, info.state
    if config.max_bytes is not None and config.max_bytes > 0:
        margin = min(ROOM_BYTES, config.max_bytes // 10)
        if state.bytes + margin >= config.max_bytes:
            return False
    return not (
        config.max_msgs is not None and config.max_msgs > 0 and state.messages >= config.max_msgs
    )
