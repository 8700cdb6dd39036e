"""Container health check: GET http://127.0.0.1:$TTP_HTTP_PORT<path> answers 2xx.

Usage: python healthcheck.py [/livez|/readyz] [port]. The port defaults to TTP_HTTP_PORT,
else 8080 (the master's default; workers default to 8081 and the console to 8083, so set
TTP_HTTP_PORT for them; the console's UI port is another, behind its login).
Exit 0 when healthy, 1 otherwise. Standard library only: the image has no curl or wget.
"""

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/livez"
    port = argv[2] if len(argv) > 2 else os.environ.get("TTP_HTTP_PORT", "8080")
    url = f"http://127.0.0.1:{int(port)}{path}"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 0 if 200 <= response.status < 300 else 1
    except (urllib.error.URLError, OSError, ValueError):
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
