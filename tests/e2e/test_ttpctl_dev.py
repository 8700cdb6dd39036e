"""`ttpctl dev --demo --exit-after-demo` as a real process.

It starts embedded NATS and PostgreSQL under its data directory, the master and two workers,
feeds the bundled demo events, and must exit 0 once they are processed with tags seen,
leaving no child process behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TTPCTL = Path(sys.executable).parent / "ttpctl"


@pytest.fixture
def workdir() -> Iterator[Path]:
    # PostgreSQL runs as `nobody` when the suite runs as root: pytest's tmp_path is 0700, so
    # use a directory of our own that every account can traverse.
    root = Path(tempfile.mkdtemp(prefix="ttp-dev-test-"))
    root.chmod(0o755)
    try:
        shutil.copytree(REPO / "rules", root / "rules")
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def free_port_base(count: int) -> int:
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            base = int(sock.getsockname()[1])
        if base + count >= 65535:
            continue
        try:
            for port in range(base + 1, base + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range")


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = Path("/proc", entry, "stat").read_text()
            except OSError:
                continue
            fields = text.rpartition(")")[2].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def processes_using(path: Path) -> list[str]:
    """Command lines that mention `path` (servers and services started for this run)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path("/proc", entry, "cmdline").read_bytes().replace(b"\0", b" ")
                environ = Path("/proc", entry, "environ").read_bytes()
            except OSError:
                continue
            if str(path).encode() in cmdline or str(path).encode() in environ:
                found.append(cmdline.decode(errors="replace"))
    return found


@pytest.mark.timeout(90)
def test_dev_demo_tags_events_and_leaves_nothing_running(workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"TTP_NATS_URL", "TTP_DATABASE_URL"}}
    data_dir = workdir / ".ttp"
    command = [
        str(TTPCTL),
        "dev",
        "--demo",
        "--exit-after-demo",
        "--workers",
        "2",
        "--data-dir",
        str(data_dir),
        "--http-port",
        str(free_port_base(3)),
    ]
    proc = subprocess.Popen(
        command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        leftovers = descendants(proc.pid)
        proc.kill()
        out, _ = proc.communicate()
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        pytest.fail("ttpctl dev did not finish:\n" + out.decode(errors="replace")[-4000:])
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    summary = [line for line in text.splitlines() if "demo done" in line]
    assert summary, text[-4000:]
    assert " 0 tags" not in summary[0]
    assert "100 events published" in summary[0]
    assert (data_dir / "ports.json").is_file()
    for name in ("master", "dev-w1", "dev-w2"):
        assert (data_dir / "logs" / f"{name}.log").stat().st_size > 0
    # Servers name the data dir on their command line, services the rules dir in their env.
    assert processes_using(workdir) == []
