"""A NATS TLS file that cannot be used stops `connect` at once, naming the variable and path.

ssl alone says only "No such file or directory" (no name) or "[X509: ...]".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ttp_runtime.nats import TlsFilesError, connect
from ttp_runtime.settings import ServiceSettings

# Nothing listens here; the error must come before any connection attempt.
UNUSED_URL = "tls://127.0.0.1:9"


async def test_a_missing_ca_file_is_named_with_its_variable(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    settings = ServiceSettings(nats_url=UNUSED_URL, nats_tls_ca=missing)
    with pytest.raises(TlsFilesError, match=rf"TTP_NATS_TLS_CA={missing}: No such file"):
        await connect(settings, "t", initial_timeout_s=1.0)


async def test_a_ca_file_without_a_certificate_is_named_with_its_variable(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    settings = ServiceSettings(nats_url=UNUSED_URL, nats_tls_ca=garbage)
    with pytest.raises(TlsFilesError, match=rf"TTP_NATS_TLS_CA={garbage}: .*X509"):
        await connect(settings, "t", initial_timeout_s=1.0)


async def test_an_unusable_client_certificate_names_both_files(tmp_path: Path) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client-key.pem"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    settings = ServiceSettings(nats_url=UNUSED_URL, nats_tls_cert=cert, nats_tls_key=key)
    with pytest.raises(TlsFilesError, match=rf"TTP_NATS_TLS_CERT={cert}, TTP_NATS_TLS_KEY={key}"):
        await connect(settings, "t", initial_timeout_s=1.0)
