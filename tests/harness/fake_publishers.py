"""A base for the recording publishers that stand in for NATS where a test looks at what a
master component publishes rather than at the bus."""

from __future__ import annotations

from collections.abc import Sequence


class PublishesOneByOne:
    """``publish_stream_many`` as the real publisher answers it (one outcome a message, in
    order, a failure kept as its exception), built on the subclass's ``publish_stream``."""

    async def publish_stream(
        self, subject: str, payload: bytes, msg_id: str, headers: dict[str, str]
    ) -> None:
        raise NotImplementedError

    async def publish_stream_many(
        self, messages: Sequence[tuple[str, bytes, str, dict[str, str]]]
    ) -> list[BaseException | None]:
        outcomes: list[BaseException | None] = []
        for message in messages:
            try:
                await self.publish_stream(*message)
            except Exception as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes
