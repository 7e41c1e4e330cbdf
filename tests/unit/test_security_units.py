"""Pure parts of issue 10: SCRAM verifiers, the card-number cipher and key, DSN pass-through, bytea text."""

from __future__ import annotations

import base64
import hashlib
import hmac
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pytest

from bankde.cdc.engines.debezium.config import connector_properties
from bankde.cdc.snapshot import adbc_uri, bytea_text
from bankde.errors import ConfigError
from bankde.settings import Settings
from bankde.source.connection import SourceInfo, parse_dsn
from bankde.source.pan import PanKey, load_key, luhn_valid
from bankde.source.scram import scram_verifier
from bankde.warehouse import lock


def test_scram_verifier_is_rfc5802_and_needs_the_password() -> None:
    salt = bytes(range(16))
    v = scram_verifier("pencil", salt=salt, iterations=4096)
    scheme, params, keys = v.split("$")
    stored_b64, server_b64 = keys.split(":")
    assert scheme == "SCRAM-SHA-256" and params == f"4096:{base64.b64encode(salt).decode()}"
    # Independently: SaltedPassword = Hi(password, salt, i); StoredKey = H(HMAC(SP, "Client Key")).
    sp = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096)
    stored = hashlib.sha256(hmac.new(sp, b"Client Key", hashlib.sha256).digest()).digest()
    server = hmac.new(sp, b"Server Key", hashlib.sha256).digest()
    assert base64.b64decode(stored_b64) == stored and base64.b64decode(server_b64) == server
    assert "pencil" not in v
    assert scram_verifier("pencil") != scram_verifier("pencil")  # a fresh salt each time


def test_card_cipher_round_trips_and_hash_is_keyed() -> None:
    key = PanKey.from_master(bytes(32))
    other = PanKey.from_master(bytes([1]) * 32)
    for pan in ("4559510000644497", "378282000000001"):
        blob = key.encrypt(pan)
        assert len(blob) in (32, 48) and pan.encode() not in blob
        assert key.decrypt(blob) == pan and key.encrypt(pan) == blob  # synthetic IV: stable
        assert (
            key.lookup_hash(pan)
            != other.lookup_hash(pan)
            != hashlib.sha256(pan.encode()).hexdigest()
        )
    assert luhn_valid("4559510000644497") and not luhn_valid("4559510000644498")


def test_key_file_errors_name_the_setting(tmp_path: Path) -> None:
    missing = Settings(home=tmp_path, pan_key_file=tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"BANKDE_PAN_KEY_FILE=.*does not exist"):
        load_key(missing)
    short = tmp_path / "short"
    short.write_text("ab" * 31)
    with pytest.raises(ConfigError, match="31 bytes, it must be 32"):
        load_key(Settings(home=tmp_path, pan_key_file=short))
    short.write_text("zz" * 32)
    with pytest.raises(ConfigError, match="64 hex digits"):
        load_key(Settings(home=tmp_path, pan_key_file=short))
    made = Settings(home=tmp_path / "home")
    first = load_key(made)
    path = tmp_path / "home" / "secrets" / "pan_key"
    assert oct(path.stat().st_mode & 0o777) == "0o600" and load_key(made) == first


def test_unknown_dsn_parameter_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"BANKDE_PG_DSN: .*sslrootcrt"):
        parse_dsn("host=h dbname=d sslrootcrt=/x")
    with pytest.raises(ConfigError, match=r"sslrootcert=/nonexistent/ca.crt does not exist"):
        parse_dsn("host=h dbname=d sslrootcert=/nonexistent/ca.crt")


def _info(tmp_path: Path) -> SourceInfo:
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    return SourceInfo(
        {"host": "db.example", "port": "5433", "dbname": "bank", "user": "bankde_cdc",
         "password": "p@ss/w:rd", "sslmode": "verify-full", "sslrootcert": str(ca),
         "channel_binding": "require", "application_name": "mine"},
        managed=False,
    )  # fmt: skip


def test_every_dsn_parameter_reaches_adbc_and_debezium(tmp_path: Path) -> None:
    info = _info(tmp_path)
    query = {k: v[0] for k, v in parse_qs(urlsplit(adbc_uri(info)).query).items()}
    assert query == info.params
    props = connector_properties(Settings(), info, [("bank", "card")], snapshot=True)
    assert props["database.sslmode"] == "verify-full"
    assert props["database.sslrootcert"] == info.params["sslrootcert"]
    assert props["driver.channelBinding"] == "require"
    assert props["database.password"] == "p@ss/w:rd"
    with pytest.raises(ConfigError, match="hostaddr"):
        connector_properties(
            Settings(),
            SourceInfo({**info.params, "hostaddr": "10.0.0.1"}, False),
            [],
            snapshot=False,
        )


def test_bytea_snapshot_values_take_the_streams_text_form() -> None:
    arr = pa.array([b"\x00\xff", None, b"", b"ab"], pa.binary())
    assert bytea_text(arr).to_pylist() == ["\\x00ff", None, "\\x", "\\x6162"]
    assert bytea_text(arr.slice(2)).to_pylist() == ["\\x", "\\x6162"]


def test_lock_file_records_subcommands_not_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        sys, "argv", ["/x/bankde", "cdc", "run", "--dsn", "password=hunter2", "extra"]
    )
    assert lock._command_line() == "bankde cdc run"
