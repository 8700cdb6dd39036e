"""The URL a local server is reached at, from the address it is bound to."""

from __future__ import annotations

import pytest

from ttp_runtime.health import local_url


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("0.0.0.0", "http://127.0.0.1:8080"),
        ("", "http://127.0.0.1:8080"),
        ("::", "http://127.0.0.1:8080"),
        ("127.0.0.1", "http://127.0.0.1:8080"),
        ("::1", "http://[::1]:8080"),
        ("console.internal", "http://console.internal:8080"),
    ],
)
def test_a_wildcard_bind_is_reached_at_loopback_and_ipv6_goes_in_brackets(
    host: str, expected: str
) -> None:
    assert local_url(host, 8080) == expected
