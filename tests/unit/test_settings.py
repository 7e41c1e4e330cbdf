"""Settings: env names, defaults, one-line errors naming the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bankde.errors import ConfigError
from bankde.settings import load_settings
from bankde.source.connection import source_info


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import os

    for k in list(os.environ):
        if k.startswith(("BANKDE_", "DB_")):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_managed_local(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert not s.external_source
    assert s.sslmode == "disable"
    assert s.pg_port == 54329
    assert s.db_name == "bank"


def test_external_server_from_db_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_HOST", "db.example.test")
    monkeypatch.setenv("DB_PORT", "6543")
    monkeypatch.setenv("DB_NAME", "core")
    monkeypatch.setenv("DB_USER", "app")
    monkeypatch.setenv("DB_PASSWORD", "s3cr3t-value")
    s = load_settings()
    assert s.external_source and s.sslmode == "verify-full"
    info = source_info(s)
    assert info.params["host"] == "db.example.test" and info.params["port"] == "6543"
    assert "s3cr3t-value" in info.dsn and "s3cr3t-value" not in info.public_dsn
    assert "s3cr3t-value" not in repr(s)


def test_dsn_takes_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANKDE_PG_DSN", "host=h1 port=5 dbname=d user=u")
    info = source_info(load_settings())
    assert info.params["host"] == "h1" and info.params["sslmode"] == "verify-full"


def test_dotenv_is_read(tmp_path) -> None:
    (tmp_path / ".env").write_text("BANKDE_PG_PORT=60001\nDB_NAME=fromfile\n")
    s = load_settings()
    assert s.pg_port == 60001 and s.db_name == "fromfile"


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("DB_PORT", "abc", "DB_PORT=abc"),
        ("BANKDE_PG_PORT", "70000", "BANKDE_PG_PORT=70000"),
        ("DB_SSLMODE", "sometimes", "DB_SSLMODE=sometimes"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_cli_config_error_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_SSLMODE", "sometimes")
    proc = subprocess.run(
        [sys.executable, "-m", "bankde.cli", "db", "status"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "DB_SSLMODE" in proc.stderr


def test_db_up_refuses_external_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANKDE_PG_DSN", "host=elsewhere dbname=x")
    proc = subprocess.run(
        [sys.executable, "-m", "bankde.cli", "db", "up"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "external server" in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_missing_binaries_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import glob as globmod
    import shutil

    from bankde.source import cluster

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(globmod, "glob", lambda pattern: [])
    with pytest.raises(ConfigError) as err:
        cluster.find_pg_bin()
    assert "apt-get install postgresql" in str(err.value) and "BANKDE_PG_DSN" in str(err.value)
