"""Help texts render literally: rich markup must not eat bracketed words such as extras."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bankde.cli import app


@pytest.mark.parametrize("command", ["run", "sync", "status", "resync"])
def test_cdc_engine_help_names_the_extra(command: str) -> None:
    result = CliRunner().invoke(app, ["cdc", command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "(extra [debezium])" in result.output
