"""Pieces of `bankde kafka` that need no broker: error lines, the secrets file, settings."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bankde.errors import ConfigError
from bankde.kafka.connect import _escape, error_line, source_properties, write_source_properties
from bankde.settings import Settings

TRACE = """org.apache.kafka.connect.errors.ConnectException: An exception occurred in the change event producer. This connector will be stopped.
\tat io.debezium.pipeline.ErrorHandler.setProducerThrowable(ErrorHandler.java:67)
Caused by: io.debezium.DebeziumException: Couldn't obtain encoding for database x
\tat io.debezium.connector.postgresql.PostgresConnectorTask.start(PostgresConnectorTask.java:123)
Caused by: org.postgresql.util.PSQLException: FATAL: password authentication failed for user "bankde_cdc"
\tat org.postgresql.core.v3.ConnectionFactoryImpl.doAuthentication(ConnectionFactoryImpl.java:693)
"""


def test_error_line_is_the_deepest_cause_without_its_package() -> None:
    assert error_line(TRACE) == (
        'PSQLException: FATAL: password authentication failed for user "bankde_cdc"'
    )
    assert error_line("java.lang.IllegalStateException: boom\n\tat x") == (
        "IllegalStateException: boom"
    )
    assert (
        error_line("Tolerance exceeded in error handler") == "Tolerance exceeded in error handler"
    )
    assert error_line(None) is None and error_line("") is None


def test_properties_escaping() -> None:
    assert _escape("a\\b") == "a\\\\b"
    assert _escape("x\ny") == "x\\ny"
    assert _escape(" lead") == "\\ lead"
    assert _escape("p=w:d#!") == "p=w:d#!"  # '=' ':' '#' in a value need no escape


def test_source_properties_are_the_capture_roles_and_private(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, pg_dsn=None, db_host="db.example", db_port=6543, db_name="bank",
        db_sslmode="require", cdc_user="cap", cdc_password="s3cret",
    )  # fmt: skip
    props = source_properties(settings)
    assert props == {
        "host": "db.example", "port": "6543", "dbname": "bank", "user": "cap",
        "password": "s3cret", "sslmode": "require", "sslrootcert": "",
    }  # fmt: skip
    path = write_source_properties(settings)
    assert path == tmp_path / "secrets" / "bankde-source.properties"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert "password=s3cret\n" in path.read_text()


def test_a_dsn_parameter_the_files_cannot_carry_is_refused(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, pg_dsn="host=h dbname=bank user=u application_name=x", cdc_password="p"
    )
    with pytest.raises(ConfigError, match="application_name"):
        source_properties(settings)


def test_ports_must_differ(tmp_path: Path) -> None:
    from bankde.kafka.cluster import ManagedKafka

    settings = Settings(home=tmp_path, kafka_port=9000, kafka_controller_port=9000)
    with pytest.raises(ConfigError, match="three different ports"):
        ManagedKafka(settings)._choose_ports()


def test_managed_source_after_db_up_tls_is_verify_full_with_its_ca(tmp_path: Path) -> None:
    from bankde.source.tls import ensure_ca

    ca = ensure_ca(tmp_path / "tls")
    props = source_properties(Settings(home=tmp_path, pg_dsn=None, db_host=None, pg_port=5999))
    assert props["sslmode"] == "verify-full"
    assert props["sslrootcert"] == str(ca.ca_cert)
    assert (props["host"], props["port"], props["user"]) == ("127.0.0.1", "5999", "bankde_cdc")
    assert props["password"]  # the managed capture role's generated password


def test_kafka_help_lists_its_commands() -> None:
    from typer.testing import CliRunner

    from bankde.cli import app

    result = CliRunner().invoke(app, ["kafka", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for command in ("up", "down", "status", "connect", "disconnect"):
        assert f" {command} " in result.output
