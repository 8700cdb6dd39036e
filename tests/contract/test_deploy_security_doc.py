"""docs/security.md matches what is deployed.

- Its roles table has a row for every role of the shipped accounts config, in that role's
  account, and its relative links lead to files that exist.
- What it says about bcrypt on the server side holds: a real nats-server running the shipped
  file admits a role whose ``TTP_NATS_PASSWORD_<ROLE>`` is the double-quoted bcrypt hash of
  its password, and refuses to start when the hash is not quoted.
- Its example of a per-person user, added to OPERATORS in the shipped file, runs on a real
  nats-server: that person reaches the control service's discovery through her own inbox and
  is refused the shipped operator's inbox.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import textwrap
import time
import warnings
from pathlib import Path

import nats
import pytest

from ttp_runtime.embedded import EmbeddedNats, EmbeddedServerError
from ttp_runtime.nats_roles import (
    ACCOUNT_OF,
    ACCOUNTS_CONFIG,
    ROLES,
    generate_credentials,
    server_environment,
)

REPO = Path(__file__).resolve().parents[2]
SECURITY = REPO / "docs" / "security.md"


def test_the_roles_table_lists_every_role_in_its_account() -> None:
    text = SECURITY.read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)` \| (\w+) \|", text, re.MULTILINE))
    assert rows == dict(ACCOUNT_OF), "the roles table differs from nats_accounts.conf"
    assert set(rows) == set(ROLES)


def test_relative_links_lead_to_files() -> None:
    text = SECURITY.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)
    assert links
    for link in links:
        assert (SECURITY.parent / link).exists(), link


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash made by the C library (what htpasswd -B makes, as $2b$)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        crypt = pytest.importorskip("crypt")  # removed in Python 3.13
        hashed = str(crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH)))
    if not hashed.startswith("$2"):
        pytest.skip("this C library has no bcrypt")
    return hashed


async def test_a_double_quoted_bcrypt_hash_on_the_server_admits_the_plain_password(
    tmp_path: Path,
) -> None:
    shutil.copyfile(ACCOUNTS_CONFIG, tmp_path / "nats_accounts.conf")
    (tmp_path / "nats.conf").write_text("include ./nats_accounts.conf\n", encoding="utf-8")
    creds = generate_credentials()
    env = server_environment(creds)
    admin = creds["admin"]
    hashed = bcrypt_hash(admin.password)
    env[admin.server_variable] = f'"{hashed}"'
    with EmbeddedNats(
        data_dir=tmp_path / "quoted",
        extra_args=("--config", str(tmp_path / "nats.conf")),
        extra_env=env,
    ) as server:
        client = await nats.connect(
            server.url, user=admin.user, password=admin.password, max_reconnect_attempts=0
        )
        await client.close()

        async def quiet(_: Exception) -> None:
            return None

        # The hash itself is not a password.
        with pytest.raises((nats.errors.Error, nats.errors.NoServersError, OSError)):
            await nats.connect(
                server.url,
                user=admin.user,
                password=hashed,
                allow_reconnect=False,
                error_cb=quiet,
            )
    env[admin.server_variable] = hashed
    with pytest.raises(EmbeddedServerError):
        EmbeddedNats(
            data_dir=tmp_path / "bare",
            extra_args=("--config", str(tmp_path / "nats.conf")),
            extra_env=env,
            start_timeout=20,
        ).start()
    log = (tmp_path / "bare" / "nats-server.log").read_text()
    assert "variable reference" in log, log[-1000:]


def person_example() -> str:
    """The accounts-file block that "Adding a person" shows."""
    text = SECURITY.read_text(encoding="utf-8")
    section = text[text.index("### Adding a person") :]
    match = re.search(r"```\n(?P<block>.*?)```", section, re.DOTALL)
    assert match is not None, "no example block under Adding a person"
    return textwrap.dedent(match["block"])


async def test_the_per_person_example_keeps_her_replies_her_own(tmp_path: Path) -> None:
    example = person_example()
    assert "user: alice" in example and "$TTP_NATS_PASSWORD_ALICE" in example
    config = ACCOUNTS_CONFIG.read_text(encoding="utf-8")
    anchor = "  OPERATORS {\n    users: [\n"
    assert config.count(anchor) == 1
    config = config.replace(anchor, anchor + example)
    (tmp_path / "nats_accounts.conf").write_text(config, encoding="utf-8")
    env = server_environment(generate_credentials())
    alice_password = "p" + secrets.token_hex(24)
    env["TTP_NATS_PASSWORD_ALICE"] = alice_password
    errors: list[str] = []

    async def note(error: Exception) -> None:
        errors.append(str(error))

    with EmbeddedNats(
        data_dir=tmp_path / "nats",
        extra_args=("--config", str(tmp_path / "nats_accounts.conf")),
        extra_env=env,
    ) as server:
        alice = await nats.connect(
            server.url,
            user="alice",
            password=alice_password,
            inbox_prefix="_INBOX_alice",
            max_reconnect_attempts=0,
            error_cb=note,
        )
        try:
            # Discovery crosses the import and answers on her inbox: with no master running,
            # "no responders" proves both the publish and her inbox subscription.
            with pytest.raises(nats.errors.NoRespondersError):
                await alice.request("$SRV.PING.ttp-ctl", b"", timeout=5)
            await alice.subscribe("_INBOX_operator.>")
            await alice.flush(timeout=5)
        finally:
            await alice.close()
        # The server writes its log line for a refusal on its own schedule, which under load
        # can come after the flush that followed the refused subscription.
        pattern = r'"OPERATORS/user:alice" - (\w+) Violation - Subject "([^"]*)"'
        deadline = time.monotonic() + 10
        while True:
            refusals = re.findall(pattern, server.log_path.read_text(errors="replace"))
            if refusals or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    assert refusals == [("Subscription", "_INBOX_operator.>")], refusals
