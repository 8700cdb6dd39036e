"""`ttpctl dev` as a real process: the whole system, each process as its NATS role.

It starts embedded NATS (with the shipped accounts config) and PostgreSQL under its data
directory, the master, two workers and the web console, and feeds the bundled demo events. It
writes each role's settings to <data-dir>/credentials/<role>.env and reuses them on the next
start, like the console's dev logins and session key; the command lines it prints act as the
operator and as a viewer, and the console login it prints logs in as the operator; the server
refuses a client without credentials; no process it starts meets a permission violation;
SIGTERM stops them all and nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import nats
import pytest

from ttp_runtime.env_file import read_env_file
from ttp_runtime.nats_roles import ROLES

REPO = Path(__file__).resolve().parents[2]
TTPCTL = Path(sys.executable).parent / "ttpctl"
WORKERS = 2
# The master's HTTP port, then one per worker, then the console's probes and metrics.
HTTP_PORTS = 1 + WORKERS + 1
CONSOLE_LOGINS = {"dev": "operator", "viewer": "viewer"}


@contextlib.contextmanager
def new_workdir() -> Iterator[Path]:
    # PostgreSQL runs as `nobody` when the suite runs as root: pytest's tmp_path is 0700, so
    # use a directory of our own that every account can traverse.
    root = Path(tempfile.mkdtemp(prefix="ttp-dev-test-"))
    root.chmod(0o755)
    try:
        shutil.copytree(REPO / "rules", root / "rules")
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def workdir() -> Iterator[Path]:
    with new_workdir() as root:
        yield root


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


def dev_environment() -> dict[str, str]:
    # No TTP_* of the caller's: dev must start its own servers and hand out its own roles.
    return {k: v for k, v in os.environ.items() if not k.startswith("TTP_")}


def dev_command(data_dir: Path, *options: str) -> list[str]:
    return [
        str(TTPCTL),
        "dev",
        "--demo",
        *options,
        "--workers",
        str(WORKERS),
        "--data-dir",
        str(data_dir),
        "--http-port",
        str(free_port_base(HTTP_PORTS)),
    ]


def run_demo(workdir: Path, data_dir: Path) -> str:
    """`ttpctl dev --demo --exit-after-demo`: its output, once it exited 0."""
    proc = subprocess.Popen(
        dev_command(data_dir, "--exit-after-demo"),
        cwd=workdir,
        env=dev_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out, _ = proc.communicate(timeout=90)
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
    assert " 0 tagged events" not in summary[0]
    assert "100 events published" in summary[0]
    return text


def ports(data_dir: Path) -> dict[str, int]:
    data: dict[str, int] = json.loads((data_dir / "ports.json").read_text())
    return data


def violations(data_dir: Path) -> list[str]:
    """Permission violations nats-server logged: a legitimate call the role config misses."""
    return [
        line
        for log in (data_dir / "nats").glob("*.log")
        for line in log.read_text(errors="replace").splitlines()
        if "Violation" in line and "Authorization Violation" not in line
    ]


def hint(output: str, label: str) -> list[str]:
    """The command line dev printed after `label` (for example "as operator:")."""
    for line in output.splitlines():
        if line.startswith(label):
            return shlex.split(line.removeprefix(label))
    pytest.fail(f"ttpctl dev printed no {label!r} line:\n{output[-4000:]}")


def some_rule_ids(rules_dir: Path, count: int) -> list[str]:
    found = []
    for path in sorted(rules_dir.rglob("*.yaml")):
        match = re.search(r"^rule_id: *(\S+)", path.read_text(), re.M)
        if match:
            found.append(match[1])
    assert len(found) >= count
    return found[:count]


def run(command: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=dev_environment(), capture_output=True, text=True, timeout=timeout, check=False
    )


def passwords(credentials_dir: Path) -> dict[str, str]:
    return {
        role: read_env_file(credentials_dir / f"{role}.env")["TTP_NATS_PASSWORD"] for role in ROLES
    }


def console_logins(output: str) -> tuple[str, dict[str, tuple[str, str]]]:
    """The console's URL and the logins dev printed: {role: (user, password)}."""
    url = hint(output, "console:")
    pairs = re.findall(r"(\S+) / (\S+) \((operator|viewer)\)", " ".join(hint(output, "log in as:")))
    return url[0], {role: (user, password) for user, password, role in pairs}


@dataclass(frozen=True)
class DemoRuns:
    """Two `ttpctl dev --demo --exit-after-demo` runs on one data directory, both exited 0
    with the demo's events tagged."""

    workdir: Path
    data_dir: Path
    first_output: str
    passwords_after_first: dict[str, str]
    console_after_first: dict[str, str]
    second_output: str
    leftovers: list[str]


@pytest.fixture(scope="module")
def demo_runs() -> Iterator[DemoRuns]:
    with new_workdir() as root:
        data_dir = root / ".ttp"
        first = run_demo(root, data_dir)
        before = passwords(data_dir / "credentials")
        console_before = read_env_file(data_dir / "console" / "logins.env")
        second = run_demo(root, data_dir)
        # Servers name the data dir on their command line, services the rules dir or the data
        # dir in their environment.
        yield DemoRuns(root, data_dir, first, before, console_before, second, processes_using(root))


@pytest.mark.timeout(300)
def test_the_demo_is_tagged_and_nothing_is_left_running(demo_runs: DemoRuns) -> None:
    for name in ("master", "dev-w1", "dev-w2", "console"):
        assert (demo_runs.data_dir / "logs" / f"{name}.log").stat().st_size > 0
    assert demo_runs.leftovers == []


@pytest.mark.timeout(300)
def test_each_role_has_a_private_file_with_its_settings(demo_runs: DemoRuns) -> None:
    credentials_dir = demo_runs.data_dir / "credentials"
    assert stat.S_IMODE(credentials_dir.stat().st_mode) == 0o700
    url = f"nats://127.0.0.1:{ports(demo_runs.data_dir)['nats']}"
    for role in ROLES:
        path = credentials_dir / f"{role}.env"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, role
        settings = read_env_file(path)
        assert settings.pop("TTP_NATS_PASSWORD"), role
        assert settings == {
            "TTP_NATS_URL": url,
            "TTP_NATS_USER": role,
            "TTP_NATS_INBOX_PREFIX": f"_INBOX_{role}",
        }
    assert len(set(demo_runs.passwords_after_first.values())) == len(ROLES)
    output = demo_runs.first_output
    assert hint(output, "as operator:")[1:3] == [
        "--env-file",
        str(credentials_dir / "operator.env"),
    ]
    assert hint(output, "as viewer:")[1:3] == ["--env-file", str(credentials_dir / "viewer.env")]


@pytest.mark.timeout(300)
def test_the_console_keeps_its_logins_private(demo_runs: DemoRuns) -> None:
    console_dir = demo_runs.data_dir / "console"
    assert stat.S_IMODE(console_dir.stat().st_mode) == 0o700
    for name in ("logins.env", "users.txt"):
        assert stat.S_IMODE((console_dir / name).stat().st_mode) == 0o600, name
    users = run(
        [
            str(TTPCTL.parent / "ttp-console"),
            "users",
            "list",
            "--file",
            str(console_dir / "users.txt"),
        ]
    )
    assert users.returncode == 0, users.stderr
    assert dict(line.split() for line in users.stdout.splitlines()) == CONSOLE_LOGINS
    url, logins = console_logins(demo_runs.first_output)
    assert url == f"http://127.0.0.1:{ports(demo_runs.data_dir)['console']}/"
    assert {role: user for role, (user, _) in logins.items()} == {
        role: user for user, role in CONSOLE_LOGINS.items()
    }
    kept = demo_runs.console_after_first
    assert logins["operator"][1] == kept["CONSOLE_DEV_PASSWORD"]
    assert logins["viewer"][1] == kept["CONSOLE_VIEWER_PASSWORD"]
    assert len(kept["TTP_CONSOLE_SESSION_SECRET"]) >= 32


@pytest.mark.timeout(300)
def test_a_restart_reuses_every_password(demo_runs: DemoRuns) -> None:
    # Shells using the files keep working, and the demo ran again under the same roles.
    assert passwords(demo_runs.data_dir / "credentials") == demo_runs.passwords_after_first
    # The console's URL, logins and sessions survive a restart too.
    kept = read_env_file(demo_runs.data_dir / "console" / "logins.env")
    assert kept == demo_runs.console_after_first
    assert console_logins(demo_runs.second_output) == console_logins(demo_runs.first_output)


@pytest.mark.timeout(300)
def test_no_process_meets_a_permission_violation(demo_runs: DemoRuns) -> None:
    # A process was refused a call it makes: the accounts config misses a grant, or the
    # process oversteps its role.
    assert violations(demo_runs.data_dir) == []


def wait_until_served(command: list[str], dev: subprocess.Popen[bytes], out: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert dev.poll() is None, out.read_text(errors="replace")[-4000:]
        if run(command).returncode == 0:
            return
        time.sleep(1)
    pytest.fail("the master never answered:\n" + out.read_text(errors="replace")[-4000:])


def connections(monitor_port: int) -> dict[str, dict[str, Any]]:
    """nats-server's client connections by name, with the user and account it authenticated."""
    url = f"http://127.0.0.1:{monitor_port}/connz?auth=true&limit=1024"
    with urllib.request.urlopen(url, timeout=10) as answer:
        data = json.load(answer)
    return {str(c.get("name")): c for c in data.get("connections", [])}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


def http_get(url: str, cookie: str | None = None) -> tuple[int, Message, str]:
    """Status, headers and body of a GET (a redirect is returned, not followed)."""
    request = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    return _open(request)


def _open(request: urllib.request.Request) -> tuple[int, Message, str]:
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=10) as answer:
            return answer.status, answer.headers, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode(errors="replace")


def session_cookie(headers: Message) -> str:
    """The console's session cookie as a Cookie header; it must come back over plain HTTP."""
    set_cookie = headers.get("Set-Cookie")
    assert set_cookie, dict(headers)
    attributes = [part.strip().lower() for part in set_cookie.split(";")[1:]]
    assert "secure" not in attributes, set_cookie
    return set_cookie.split(";", 1)[0]


def log_in_to_console(url: str, user: str, password: str) -> str:
    """Log in through the login form as a browser would; the page the login leads to."""
    status, headers, page = http_get(url + "login")
    assert status == 200, page
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None, page
    form = {"username": user, "password": password, "csrf_token": token[1], "next": "/"}
    request = urllib.request.Request(
        url + "login",
        data=urllib.parse.urlencode(form).encode(),
        headers={
            "Cookie": session_cookie(headers),
            "Origin": url.rstrip("/"),
            "Sec-Fetch-Site": "same-origin",
            "Content-Type": "application/x-www-form-urlencoded",
        },
        method="POST",
    )
    status, headers, page = _open(request)
    assert status == 303, page
    status, _, page = http_get(url.rstrip("/") + headers["Location"], session_cookie(headers))
    assert status == 200, page
    return page


def wait_until_ready(port: int, dev: subprocess.Popen[bytes], out: Path) -> None:
    deadline = time.monotonic() + 90
    answer = ""
    while time.monotonic() < deadline:
        assert dev.poll() is None, out.read_text(errors="replace")[-4000:]
        with contextlib.suppress(OSError):
            status, _, answer = http_get(f"http://127.0.0.1:{port}/readyz")
            if status == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"the console never got ready ({answer}):\n{out.read_text(errors='replace')}")


async def refused(url: str, **auth: str) -> bool:
    async def quiet(_: Exception) -> None:
        return None

    try:
        client = await nats.connect(
            url, allow_reconnect=False, connect_timeout=5, error_cb=quiet, **auth
        )
    except Exception:
        return True
    await client.close()
    return False


@pytest.mark.timeout(240)
def test_the_printed_commands_and_console_login_work_and_sigterm_stops_all(
    workdir: Path,
) -> None:
    data_dir = workdir / ".ttp"
    out = workdir / "dev.out"
    command = dev_command(data_dir)
    console_health_port = int(command[-1]) + WORKERS + 1
    with out.open("wb") as sink:
        dev = subprocess.Popen(
            command,
            cwd=workdir,
            env=dev_environment(),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while "log in as:" not in out.read_text(errors="replace"):
            assert dev.poll() is None and time.monotonic() < deadline, out.read_text()[-4000:]
            time.sleep(0.5)
        printed = out.read_text(errors="replace")
        as_viewer = hint(printed, "as viewer:")
        as_operator = hint(printed, "as operator:")
        assert as_viewer[3:] == ["state", "show"]
        assert as_operator[3:6] == ["state", "set", "RULE"]
        muted, other = some_rule_ids(workdir / "rules", 2)
        wait_until_served(as_viewer, dev, out)

        # Every process authenticated as its role (the demo feed as producer comes and goes).
        by_name = connections(ports(data_dir)["nats_monitor"])
        users = {name: c.get("authorized_user") for name, c in by_name.items()}
        assert users["ttpctl-dev"] == "consumer", users
        assert users["ttp-master"] == "master", users
        assert users["ttp-worker-dev-w1"] == users["ttp-worker-dev-w2"] == "worker", users

        # The console: where ports.json says, ready once it read the streams, and the printed
        # operator login logs in through the login form.
        url, logins = console_logins(printed)
        assert url == f"http://127.0.0.1:{ports(data_dir)['console']}/"
        wait_until_ready(console_health_port, dev, out)
        assert connections(ports(data_dir)["nats_monitor"])["ttp-console"]["authorized_user"] == (
            "console"
        )
        user, password = logins["operator"]
        page = log_in_to_console(url, user, password)
        assert re.search(rf'<span class="user-name">{user}</span>', page), page
        assert '<span class="user-role">operator</span>' in page, page

        operator = run([*as_operator[:5], muted, *as_operator[6:]])
        assert operator.returncode == 0, operator.stderr
        assert "disabled" in operator.stdout
        viewer = run(as_viewer)
        assert viewer.returncode == 0, viewer.stderr
        assert re.search(rf"^{muted} +disabled", viewer.stdout, re.M), viewer.stdout

        # A viewer may read state, never change it.
        refused_set = run([*as_viewer[:3], "state", "set", other, "--disable", "--reason", "x"])
        assert refused_set.returncode != 0, refused_set.stdout
        shown = run([*as_viewer[:3], "state", "show", other])
        assert shown.returncode == 0, shown.stderr
        assert "disabled" not in shown.stdout

        # The server itself refuses a client without credentials, or with a wrong password.
        url = read_env_file(data_dir / "credentials" / "viewer.env")["TTP_NATS_URL"]
        assert asyncio.run(refused(url))
        assert asyncio.run(refused(url, user="operator", password="p" + "0" * 48))
    finally:
        if dev.poll() is None:
            dev.send_signal(signal.SIGTERM)
        try:
            code = dev.wait(60)
        except subprocess.TimeoutExpired:
            for pid in descendants(dev.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            dev.kill()
            raise
    output = out.read_text(errors="replace")
    assert code == 0, output[-4000:]
    # Each process stopped on its own within the grace, the console too.
    assert "did not stop" not in output, output[-4000:]
    console_log = (data_dir / "logs" / "console.log").read_text(errors="replace")
    assert any(line.endswith("console stopped") for line in console_log.splitlines()), console_log[
        -2000:
    ]
    assert processes_using(workdir) == []
