"""`deploy/Dockerfile` builds a small, non-root image, checked without a Docker engine.

A structural lint over the parsed instructions: multi-stage (the wheel is built in a builder
stage, the final stage only copies the virtual environment), pinned base images (never
``latest``), the final stage runs as uid 10001, exec-form ENTRYPOINT/CMD/HEALTHCHECK, no build
tools installed in the final stage, the Python environment variables and OCI labels set.
``.dockerignore`` is evaluated with Docker's rules (last match wins, ``!`` re-includes): it
must keep .venv and .git out and let in every file the Dockerfile copies. The health check
script is run against a local HTTP server. The builder starts every program of the project, and
the console's templates and static files reach the image (package data in the wheel, in the
build context, and compared with the sources after the install).
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
HEALTHCHECK = REPO / "deploy" / "docker" / "healthcheck.py"
BUILD_TOOLS = {
    "gcc",
    "g++",
    "cc",
    "make",
    "build-essential",
    "libc6-dev",
    "libc-dev",
    "python3-dev",
    "git",
    "cmake",
    "clang",
}


@dataclass
class Instruction:
    keyword: str
    arguments: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with line continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comments inside a continued instruction are dropped by Docker
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip())
        if instruction.keyword == "FROM":
            parts = instruction.arguments.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif not stages:
            assert instruction.keyword == "ARG", f"{instruction.keyword} before the first FROM"
            key, _, default = instruction.arguments.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(instruction)
    return global_args, stages


def resolve(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], value)


def exec_form(arguments: str) -> list[str]:
    parsed = json.loads(arguments)
    assert isinstance(parsed, list) and all(isinstance(x, str) for x in parsed), arguments
    return parsed


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def test_the_parser_sees_what_docker_sees() -> None:
    args, stages = parse_dockerfile(
        "ARG BASE=python:3.11-slim\nFROM ${BASE} AS b\n# c\nRUN a \\\n  # inner\n  && b\n"
        "FROM b\nUSER 1\n"
    )
    assert args == {"BASE": "python:3.11-slim"}
    assert [(s.base, s.name) for s in stages] == [("${BASE}", "b"), ("b", None)]
    assert stages[0].instructions == [Instruction("RUN", "a  && b")]
    assert resolve(stages[0].base, args) == "python:3.11-slim"


def test_multi_stage_with_pinned_python_slim_bases(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    args, stages = dockerfile
    assert len(stages) >= 2, "build in one stage, run in another"
    names = {s.name for s in stages if s.name}
    for stage in stages:
        image = resolve(stage.base, args)
        if image in names:
            continue  # FROM an earlier stage
        repository, _, tag = image.partition("@")[0].rpartition(":")
        assert repository and tag, f"{image}: no tag"
        assert tag != "latest" and "latest" not in tag, f"{image}: not pinned"
    final = resolve(stages[-1].base, args)
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", final), final
    builder = stages[0]
    assert builder.name, "the builder stage needs a name to copy from"
    copies = [c.arguments for c in stages[-1].all("COPY")]
    assert any(c.startswith(f"--from={builder.name} ") for c in copies)
    # The wheel is built in the builder, never in the final stage.
    assert any("pip wheel" in r.arguments for r in builder.all("RUN"))
    assert not any("pip " in r.arguments for r in stages[-1].all("RUN"))


def test_final_stage_runs_as_uid_10001(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    final = stages[-1]
    users = final.all("USER")
    assert users, "the final stage must not run as root"
    user, _, group = users[-1].arguments.partition(":")
    assert user == "10001" and group in {"", "10001"}
    runs = " ".join(r.arguments for r in final.all("RUN"))
    assert "--uid 10001" in runs and "--gid 10001" in runs
    # Nothing after USER may need root (RUN would then fail or silently differ).
    keywords = [i.keyword for i in final.instructions]
    assert "RUN" not in keywords[keywords.index("USER") :]


def test_exec_form_entrypoint_cmd_and_healthcheck(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    _, stages = dockerfile
    final = stages[-1]
    (entrypoint,) = final.all("ENTRYPOINT")
    (cmd,) = final.all("CMD")
    # No fixed program: `docker run IMAGE ttp-worker` or `... ttpctl ...` replaces the CMD.
    assert exec_form(entrypoint.arguments) == []
    assert exec_form(cmd.arguments)[0] in {"ttp-master", "ttp-worker", "ttpctl"}
    (healthcheck,) = final.all("HEALTHCHECK")
    _, _, command = healthcheck.arguments.partition("CMD ")
    probe = exec_form(command)
    assert probe[0] == "python" and probe[-1] == "/livez"
    copied = [shlex.split(c.arguments) for c in final.all("COPY")]
    assert ["deploy/docker/healthcheck.py", probe[1]] in copied


def test_no_build_tools_in_the_final_stage(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    for run in stages[-1].all("RUN"):
        words = set(re.split(r"[\s;&|]+", run.arguments))
        assert not words & BUILD_TOOLS, f"build tools in the final stage: {words & BUILD_TOOLS}"
        assert "apt-get install" not in run.arguments and "apk add" not in run.arguments


def test_python_environment_and_labels(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    final = stages[-1]
    env = " ".join(e.arguments for e in final.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    labels = " ".join(label.arguments for label in final.all("LABEL"))
    for key in ("title", "description", "licenses", "version"):
        assert f"org.opencontainers.image.{key}=" in labels


# --------------------------------------------------------------------------------------------
# .dockerignore
# --------------------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out = out[:-2] + "(?:.*/)?"
                i += 1
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def ignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rules.append((negate, _pattern_regex(pattern)))
    return rules


def excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for negate, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            verdict = not negate
    return verdict


def test_the_ignore_matcher_follows_docker_rules() -> None:
    rules = ignore_rules("*\n!src/\n**/__pycache__\n")
    assert excluded(".venv/bin/python", rules)
    assert not excluded("src/a.py", rules)
    assert excluded("src/__pycache__/a.pyc", rules)


def test_dockerignore_keeps_local_state_out_and_the_sources_in(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    rules = ignore_rules(DOCKERIGNORE.read_text(encoding="utf-8"))
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        ".ttp/data/pg",
        "tests/conftest.py",
        "services/ttp_master/__pycache__/cli.cpython-311.pyc",
        "ttp_rulebus.egg-info/PKG-INFO",
        ".pytest_cache/README.md",
    ):
        assert excluded(path, rules), f"{path} would be sent to the build"
    _, stages = dockerfile
    sources: list[str] = []
    for stage in stages:
        for copy in stage.all("COPY"):
            words = [w for w in shlex.split(copy.arguments) if not w.startswith("--")]
            if any(w.startswith("--from") for w in shlex.split(copy.arguments)):
                continue
            sources += words[:-1]
    assert {"pyproject.toml", "shared", "services"} <= set(sources)
    for source in sources:
        target = REPO / source
        assert target.exists(), f"COPY {source}: no such file"
        files = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if "__pycache__" in relative:
                continue
            assert not excluded(relative, rules), f"COPY needs {relative}, .dockerignore drops it"
    # The package data the services read at run time is part of the context.
    assert not excluded("services/ttpctl/demo_events.jsonl", rules)
    assert not excluded("services/ttp_master/migrations/versions/x.py", rules)


# --------------------------------------------------------------------------------------------
# The health check script
# --------------------------------------------------------------------------------------------


class _Probe(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/livez" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def probe_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Probe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_script_reports_the_probe_status(probe_port: int) -> None:
    def run(*args: str) -> int:
        return subprocess.run(
            [sys.executable, str(HEALTHCHECK), *args], timeout=30, check=False
        ).returncode

    assert run("/livez", str(probe_port)) == 0
    assert run("/readyz", str(probe_port)) == 1  # 503: not ready
    server = http.server.HTTPServer(("127.0.0.1", 0), _Probe)
    closed_port = server.server_address[1]
    server.server_close()
    assert run("/livez", str(closed_port)) == 1  # nothing listening


# --------------------------------------------------------------------------------------------
# Every program, and the package data the console serves
# --------------------------------------------------------------------------------------------


def project() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)


def test_the_builder_starts_every_program_of_the_project(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    _, stages = dockerfile
    runs = " ".join(r.arguments for r in stages[0].all("RUN"))
    scripts = set(project()["project"]["scripts"])
    assert {"ttp-master", "ttp-worker", "ttpctl", "ttp-console"} <= scripts
    for script in scripts:
        # A program that cannot even print its help (a missing module) fails the build.
        assert f"/opt/ttp-rulebus/bin/{script} --help" in runs, f"{script} is never started"
    header = DOCKERFILE.read_text(encoding="utf-8").split("\nARG ", 1)[0]
    for script in scripts:
        assert f"ttp-rulebus:dev {script}" in header, f"the header shows no way to run {script}"


def test_the_console_templates_and_static_files_are_shipped(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    # pyproject's package data puts them into the wheel...
    package_data: dict[str, list[str]] = project()["tool"]["setuptools"]["package-data"]
    console = REPO / "services" / "ttp_console"
    assets = sorted(
        path.relative_to(console).as_posix()
        for folder in ("templates", "static")
        for path in (console / folder).rglob("*")
        if path.is_file()
    )
    assert any(a.endswith(".html") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        assert any(
            fnmatch.fnmatch(asset, pattern) and asset.count("/") == pattern.count("/")
            for pattern in package_data["ttp_console"]
        ), f"{asset} is left out of the wheel: add it to ttp_console's package-data"
    # ...the build context has them...
    rules = ignore_rules(DOCKERIGNORE.read_text(encoding="utf-8"))
    for asset in assets:
        assert not excluded(f"services/ttp_console/{asset}", rules), asset
    # ...and the builder fails unless the installed package holds exactly the sources' files.
    _, stages = dockerfile
    runs = " ".join(r.arguments for r in stages[0].all("RUN"))
    assert "find ttp_console/templates ttp_console/static -type f" in runs
    assert "| diff /tmp/console-data -" in runs
    # Runtime data of the other packages: every non-Python file but documentation ships.
    for package_dir in (*(REPO / "services").iterdir(), *(REPO / "shared").iterdir()):
        if not (package_dir / "__init__.py").is_file():
            continue
        patterns = package_data.get(package_dir.name, [])
        for path in package_dir.rglob("*"):
            relative = path.relative_to(package_dir).as_posix()
            if (
                not path.is_file()
                or path.suffix in {".py", ".pyc", ".md"}
                or "__pycache__" in relative
            ):
                continue
            assert any(
                fnmatch.fnmatch(relative, p) and relative.count("/") == p.count("/")
                for p in patterns
            ), f"{package_dir.name}/{relative} is left out of the wheel"
