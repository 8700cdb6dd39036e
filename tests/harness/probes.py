"""Reading a process's /metrics from outside, as a Prometheus scrape would."""

from __future__ import annotations

import urllib.request


def http_metric(port: int, series: str) -> float | None:
    """The value of one series (`name` or `name{label="value"}`) on 127.0.0.1:`port`/metrics;
    None when the process does not export it (yet)."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=2) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f"{series} "):
                return float(line.split()[1])
    return None
