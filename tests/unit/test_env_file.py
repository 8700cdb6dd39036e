"""KEY=VALUE settings files: what is read, and what is refused without echoing a value;
private files: written whole and only their owner may read them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ttp_runtime.env_file import (
    MAX_ENV_FILE_BYTES,
    EnvFileError,
    parse_env_text,
    read_env_file,
    read_private_env_file,
    write_private_file,
)


def test_comments_blank_lines_export_and_quotes() -> None:
    text = (
        "# ttp-rulebus NATS credentials of the viewer role\n"
        "\n"
        "TTP_NATS_URL=nats://127.0.0.1:4999\n"
        "  export TTP_NATS_USER = viewer  \n"
        "TTP_NATS_PASSWORD='p#not a comment'\n"
        'TTP_NATS_INBOX_PREFIX="_INBOX_viewer"\n'
        "TTP_EMPTY=\n"
    )
    assert parse_env_text(text) == {
        "TTP_NATS_URL": "nats://127.0.0.1:4999",
        "TTP_NATS_USER": "viewer",
        "TTP_NATS_PASSWORD": "p#not a comment",
        "TTP_NATS_INBOX_PREFIX": "_INBOX_viewer",
        "TTP_EMPTY": "",
    }


def test_values_are_literal_and_the_last_repeat_wins() -> None:
    text = "A=$HOME/x\nB=a=b\nA=${PATH}\n"
    assert parse_env_text(text) == {"A": "${PATH}", "B": "a=b"}


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("TTP_NATS_PASSWORD s3cret-value", "not a KEY=VALUE line"),
        ("1TTP=s3cret-value", "not a KEY=VALUE line"),
        ("TTP NATS=s3cret-value", "not a KEY=VALUE line"),
        ("=s3cret-value", "not a KEY=VALUE line"),
        ("TTP_NATS_PASSWORD='s3cret-value", "unclosed quote"),
        ("TTP_NATS_PASSWORD=s3cret-value\0", "NUL"),
    ],
)
def test_a_malformed_line_is_named_and_its_value_never_shown(line: str, why: str) -> None:
    with pytest.raises(EnvFileError) as caught:
        parse_env_text(f"# first\nTTP_OK=1\n{line}\n", "creds.env")
    message = str(caught.value)
    assert "creds.env, line 3" in message
    assert why in message
    assert "s3cret" not in message


def test_read_env_file_reads_utf8_text(tmp_path: Path) -> None:
    path = tmp_path / "a.env"
    path.write_text("TTP_NATS_USER=opérateur\n", encoding="utf-8")
    assert read_env_file(path) == {"TTP_NATS_USER": "opérateur"}


def test_read_env_file_refuses_what_is_not_a_settings_file(tmp_path: Path) -> None:
    with pytest.raises(EnvFileError, match="cannot read"):
        read_env_file(tmp_path / "missing.env")
    with pytest.raises(EnvFileError, match="cannot read"):
        read_env_file(tmp_path)
    binary = tmp_path / "binary.env"
    binary.write_bytes(b"TTP_A=\xff\xfe\n")
    with pytest.raises(EnvFileError, match="not UTF-8"):
        read_env_file(binary)
    large = tmp_path / "large.env"
    large.write_text("# x\n" * (MAX_ENV_FILE_BYTES // 4 + 1))
    with pytest.raises(EnvFileError, match="larger than"):
        read_env_file(large)


def test_private_file_replaces_a_readable_one_and_reads_back_as_private(tmp_path: Path) -> None:
    path = tmp_path / "logins.env"
    path.write_text("OLD=1\n")
    path.chmod(0o644)
    write_private_file(path, "TTP_A=é\n")
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_private_env_file(path, "logins file") == (None, {"TTP_A": "é"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logins.env"]


def test_private_file_that_cannot_be_renamed_into_place_leaves_no_temporary(
    tmp_path: Path,
) -> None:
    taken = tmp_path / "a directory"
    (taken / "inside").mkdir(parents=True)
    with pytest.raises(OSError):
        write_private_file(taken, "TTP_A=1\n")
    assert sorted(os.listdir(tmp_path)) == ["a directory"]
