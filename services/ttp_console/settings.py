"""The console's settings (see docs/console.md): environment only, `TTP_` prefix.

The web UI listens on ``TTP_CONSOLE_HOST``:``TTP_CONSOLE_PORT``; probes and metrics stay on
``TTP_HTTP_PORT`` like every other service. A secret (the session key) may also arrive as a
file in the secrets directory, through the shared base.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from ttp_runtime.settings import ServiceSettings

ConsoleAuthMode = Literal["users", "proxy"]
ProxyNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Shorter keys are guessable enough to forge a session cookie offline.
MIN_SESSION_SECRET_CHARS = 32


def _comma_separated(value: object) -> object:
    """``a, b`` from the environment as ``["a", "b"]`` (a JSON list or a list passes as is)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


def canonical_origin(text: str) -> str:
    """``text`` written as a browser writes an ``Origin`` header: ``scheme://host[:port]``,
    lower case, without the scheme's default port; ``ValueError`` says what is wrong."""
    example = "e.g. https://console.example.com or https://console.example.com:8443"
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{text[:200]!r} is not a URL ({exc}); {example}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{text[:200]!r} must start with https:// or http://; {example}")
    if parts.path not in {"", "/"} or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(
            f"{text[:200]!r} must be a scheme, a host and an optional port only (no path,"
            f" query, fragment or user); {example}"
        )
    host = parts.hostname
    if not host:
        raise ValueError(f"{text[:200]!r} has no host; {example}")
    if port == 0:
        raise ValueError(f"{text[:200]!r} has port 0; {example}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not host.isascii():
            raise ValueError(
                f"{text[:200]!r}: write an internationalised host name in its xn-- form,"
                " as browsers send it"
            ) from None
        if not _HOST_NAME.fullmatch(host) or host.rsplit(".", 1)[-1].isdigit():
            raise ValueError(f"{text[:200]!r} has no valid host name; {example}") from None
        netloc = host
    else:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise ValueError(f"{text[:200]!r}: browsers do not use IPv6 zone ids in origins")
        netloc = f"[{address.compressed}]" if address.version == 6 else address.compressed
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    return f"{scheme}://{netloc}"


class ConsoleSettings(ServiceSettings):
    """Environment of `ttp-console`."""

    http_port: int = Field(
        default=8083, ge=0, le=65535, description="Port of /livez, /readyz and /metrics."
    )
    nats_inbox_prefix: str = Field(
        default="_INBOX_console",
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description="Subject prefix of the console's reply inboxes (its role's, in the shipped"
        " NATS accounts config).",
    )
    console_host: str = Field(
        default="0.0.0.0",  # noqa: S104 (a service in a container listens on every interface)
        description="Address the web UI listens on.",
    )
    console_port: int = Field(default=8090, ge=0, le=65535, description="Port of the web UI.")
    console_auth: ConsoleAuthMode = Field(
        default="users",
        description="Who the user is: `users` (login against the users file) or `proxy`"
        " (X-Forwarded-User/-Email from a trusted proxy such as oauth2-proxy).",
    )
    console_users_file: Path = Field(
        default=Path("console-users.txt"),
        description="The local users file (users mode; `ttp-console users add` writes it).",
    )
    console_trusted_proxies: Annotated[list[ProxyNetwork], NoDecode] = Field(
        default_factory=list,
        description="Proxy mode: address ranges (CIDRs, comma separated) whose connections may"
        " name the user in X-Forwarded-User/-Email; a request from anywhere else is refused.",
    )
    console_operators: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Proxy mode: user names or emails (comma separated) that are operators;"
        " everyone else the proxy lets through is a viewer.",
    )
    console_session_secret: SecretStr | None = Field(
        default=None,
        description="Key that signs session cookies (at least 32 characters). Unset: a random"
        " key per process, so sessions end when the console restarts.",
    )
    console_public_origin: str | None = Field(
        default=None,
        description="The origin browsers reach the console at (`https://host[:port]`, no"
        " path). Set: a state change must come with exactly this Origin, whatever Host the"
        " proxy forwards, and an https origin gets HSTS. Unset: Origin must match the Host"
        " header.",
    )
    console_cookie_secure: bool = Field(
        default=True,
        description="Mark the session cookie Secure (sent over HTTPS only). Turn off only for"
        " plain-HTTP development on one machine.",
    )
    console_session_max_age_s: int = Field(
        default=8 * 3600,
        ge=60,
        le=30 * 24 * 3600,
        description="How long a login lasts, from the moment of login.",
    )
    console_login_max_failures: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Failed logins per user name within the throttle window before further"
        " attempts for it are refused; a client address may fail four times as often.",
    )
    console_login_window_s: float = Field(
        default=900.0, gt=0, description="Window of the failed-login throttle."
    )
    console_live_streams_per_user: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Live-tag streams one user may hold open at once (a stream per browser"
        " tab); a further one is refused with 429. The console holds at most 64 for everyone.",
    )

    @field_validator("console_trusted_proxies", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        return _comma_separated(value)

    @field_validator("console_operators", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        return _comma_separated(value)

    @field_validator("console_public_origin", mode="before")
    @classmethod
    def _origin(cls, value: object) -> object:
        # Empty (as compose writes an unset `${VAR:-}`) means unset.
        if isinstance(value, str):
            return canonical_origin(value) if value.strip() else None
        return value

    @field_validator("console_session_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < MIN_SESSION_SECRET_CHARS:
            raise ValueError(
                f"TTP_CONSOLE_SESSION_SECRET must have at least {MIN_SESSION_SECRET_CHARS}"
                " characters"
            )
        return value

    @model_validator(mode="after")
    def _proxy_mode_needs_proxies(self) -> Self:
        # Proxy mode without a trusted range would refuse every request: say so at start.
        if self.console_auth == "proxy" and not self.console_trusted_proxies:
            raise ValueError("TTP_CONSOLE_AUTH=proxy needs TTP_CONSOLE_TRUSTED_PROXIES (CIDRs)")
        return self

    def is_operator(self, name: str, email: str | None) -> bool:
        """Whether a proxy-verified user is an operator (names exact, emails in any case)."""
        for entry in self.console_operators:
            if entry == name or (email is not None and entry.casefold() == email.casefold()):
                return True
        return False
