"""A real nats-server (JetStream) that requires TLS, with certificates made for the test.

:func:`tls_nats` writes a throwaway CA (``trustme``), a server certificate for ``127.0.0.1``
and ``localhost``, and one client certificate, then starts :class:`EmbeddedNats` with a config
file holding a ``tls { ... }`` block. With ``verify=True`` the server also demands a client
certificate signed by that CA (mutual TLS). The paths are what a service is given through
``TTP_NATS_TLS_CA`` / ``TTP_NATS_TLS_CERT`` / ``TTP_NATS_TLS_KEY``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme

from ttp_runtime.embedded import EmbeddedNats

__all__ = ["LOOPBACK_NAMES", "TlsFiles", "TlsNats", "make_tls_files", "tls_nats"]


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one test PKI: the CA, the server's pair and one client's pair."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclass(frozen=True)
class TlsNats:
    """A running TLS nats-server and the files a client needs to reach it."""

    server: EmbeddedNats
    files: TlsFiles
    verify: bool

    @property
    def url(self) -> str:
        """``tls://127.0.0.1:<port>``: the server hands out TLS only."""
        return f"tls://127.0.0.1:{self.server.port}"


LOOPBACK_NAMES = ("127.0.0.1", "localhost")


def make_tls_files(
    directory: Path,
    *,
    server_names: tuple[str, ...] = LOOPBACK_NAMES,
    client_name: str = "ttp-worker",
) -> TlsFiles:
    """Write a fresh CA, a server certificate for `server_names` and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="ttp-rulebus test CA")
    server = ca.issue_cert(*server_names)
    client = ca.issue_cert(f"{client_name}@ttp.test", common_name=client_name)
    files = TlsFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    for blob in server.cert_chain_pems:
        blob.write_to_path(str(files.server_cert), append=True)
    server.private_key_pem.write_to_path(str(files.server_key))
    for blob in client.cert_chain_pems:
        blob.write_to_path(str(files.client_cert), append=True)
    client.private_key_pem.write_to_path(str(files.client_key))
    for key in (files.server_key, files.client_key):
        key.chmod(0o600)
    return files


def tls_config(files: TlsFiles, *, verify: bool) -> str:
    """The nats-server ``tls`` block (JSON strings are valid NATS config strings)."""
    return (
        "tls {\n"
        f"  cert_file: {json.dumps(str(files.server_cert))}\n"
        f"  key_file: {json.dumps(str(files.server_key))}\n"
        f"  ca_file: {json.dumps(str(files.ca))}\n"
        f"  verify: {'true' if verify else 'false'}\n"
        "  timeout: 5\n"
        "}\n"
    )


@contextlib.contextmanager
def tls_nats(
    directory: Path, *, verify: bool = False, server_names: tuple[str, ...] = LOOPBACK_NAMES
) -> Iterator[TlsNats]:
    """Start a JetStream nats-server requiring TLS (and client certificates if `verify`).

    The server certificate names `server_names`; a name other than the loopback ones makes a
    server whose certificate does not match the address clients dial.
    """
    files = make_tls_files(directory / "pki", server_names=server_names)
    config = directory / "nats-tls.conf"
    config.write_text(tls_config(files, verify=verify))
    # Command-line flags (port, JetStream, store) add to the file, which brings only TLS.
    with EmbeddedNats(data_dir=directory / "nats", extra_args=("--config", str(config))) as server:
        yield TlsNats(server, files, verify)
