"""The worker's settings (see docs/operations.md): environment only, `TTP_` prefix."""

from __future__ import annotations

import re
import socket

from pydantic import Field, field_validator

from ttp_core.contract import subjects
from ttp_runtime.settings import ServiceSettings

_NOT_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


def default_worker_id() -> str:
    """The host name made into one subject token (`a.b.local` -> `a-b-local`)."""
    name = _NOT_TOKEN.sub("-", socket.gethostname())[:64]
    return name or "worker"


class WorkerSettings(ServiceSettings):
    """Environment of `ttp-worker`."""

    worker_id: str = Field(
        default_factory=default_worker_id,
        description="This worker's id in `ttp.worker.status.<worker_id>` (default: host name).",
    )
    http_port: int = Field(default=8081, ge=0, le=65535, description="Port of the HTTP server.")
    consumer_name: str = Field(
        default="ttp-workers",
        description="The durable pull consumer on TTP_EVENTS that all workers share.",
    )
    fetch_batch: int = Field(default=256, ge=1, le=10_000, description="Events per fetch.")
    fetch_timeout_s: float = Field(
        default=1.0, gt=0, le=30, description="Longest wait of one fetch (bounds SIGTERM delay)."
    )
    ack_wait_s: float = Field(
        default=30.0,
        gt=0,
        description="Redelivery delay of an unacked event (set on the shared consumer).",
    )
    max_ack_pending: int = Field(
        default=20_000, ge=1, description="Unacked events the shared consumer allows in flight."
    )
    status_interval_s: float = Field(
        default=5.0, gt=0, description="Seconds between `ttp.worker.status` heartbeats."
    )
    max_event_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Larger events are dead-lettered (oversize)."
    )
    max_deliveries: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Deliveries of one event whose processing may be attempted; the next one"
        " dead-letters it (max_deliveries), for events that kill or stall every worker.",
    )
    deadletter_text_cap: int = Field(
        default=64 * 1024, ge=256, description="Bytes of a rejected event kept in its dead letter."
    )
    resync_backoff_max_s: float = Field(
        default=30.0, gt=0, description="Longest wait between two rule resyncs after errors."
    )

    @field_validator("worker_id")
    @classmethod
    def _token(cls, value: str) -> str:
        return subjects.token(value)

    def logs_in(self) -> bool:
        """Whether the worker presents NATS credentials (a user, token or creds file, or a
        user in a server URL): then it runs under accounts where the master owns the
        streams, and does not try to create them (ttp_worker/streams.py)."""
        in_url = any("@" in url.split("://", 1)[-1] for url in self.nats_servers())
        return bool(self.nats_user or self.nats_token or self.nats_creds_file or in_url)
