"""The dbt runner's environment, the chdb adapter plugin's registration, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from bankde.errors import ConfigError
from bankde.settings import Settings
from bankde.transform import runner
from bankde.transform.runner import DEV_SALT, PATH_VAR, dbt_env, project_dir, run_dbt, with_vars


def test_embedded_env_points_dbt_at_the_warehouse_and_prefix(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, wh_prefix="t1_", clickhouse_url=None)
    env = dbt_env(s)
    assert env["BANKDE_DBT_TARGET"] == "chdb"
    # The directory reaches the adapter through the profile (--vars), never the environment.
    assert "BANKDE_WAREHOUSE_DIR" not in env
    args = with_vars(["build"], {PATH_VAR: runner.warehouse_path(s)})
    assert args[-2:] == ["--vars", f"{{{PATH_VAR}: {(tmp_path / 'warehouse').resolve()}}}"]
    assert env["BANKDE_WH_PREFIX"] == "t1_"
    # Artifacts per prefix, outside the repo.
    assert env["DBT_TARGET_PATH"] == str(tmp_path.resolve() / "dbt" / "t1" / "target")
    assert env["BANKDE_PII_SALT"]


def test_pii_salt_from_dotenv_reaches_dbt_and_stays_out_of_repr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BANKDE_PII_SALT", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("BANKDE_PII_SALT=from-dotenv-7f3a\n")
    runner._warn_dev_salt.cache_clear()
    s = Settings(home=tmp_path)
    assert dbt_env(s)["BANKDE_PII_SALT"] == "from-dotenv-7f3a"
    assert "from-dotenv-7f3a" not in repr(s)
    assert capsys.readouterr().err == ""


def test_dev_salt_is_used_with_one_warning_per_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BANKDE_PII_SALT", raising=False)
    monkeypatch.chdir(tmp_path)
    runner._warn_dev_salt.cache_clear()
    s = Settings(home=tmp_path)
    assert dbt_env(s)["BANKDE_PII_SALT"] == DEV_SALT
    dbt_env(s)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "BANKDE_PII_SALT" in err[0]


def test_server_env_is_derived_from_the_clickhouse_url(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, clickhouse_url="https://ana:s3cret@ch.example:8443")
    env = dbt_env(s)
    assert env["BANKDE_DBT_TARGET"] == "clickhouse"
    assert (env["BANKDE_CH_HOST"], env["BANKDE_CH_PORT"]) == ("ch.example", "8443")
    assert (env["BANKDE_CH_USER"], env["BANKDE_CH_PASSWORD"]) == ("ana", "s3cret")
    assert env["BANKDE_CH_SECURE"] == "True"


def test_bad_clickhouse_url_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BANKDE_CLICKHOUSE_URL"):
        dbt_env(Settings(home=tmp_path, clickhouse_url="tcp://nowhere"))


def test_unknown_dbt_command_is_a_config_error(tmp_path: Path) -> None:
    from bankde.warehouse.session import open_session

    settings = Settings(home=tmp_path, clickhouse_url=None)
    with (
        open_session(settings) as session,
        pytest.raises(ConfigError, match="dbt command must be one of"),
    ):
        run_dbt(["drop-everything"], settings, session)


def test_callers_vars_and_the_runners_are_one_mapping() -> None:
    import yaml

    args = with_vars(
        ["build", "--vars", "{cdc_pin_version: 7}", "-s", "marts"], {PATH_VAR: "/w h/x"}
    )
    assert args[:3] == ["build", "-s", "marts"] and args[3] == "--vars"
    assert yaml.safe_load(args[4]) == {"cdc_pin_version": 7, PATH_VAR: "/w h/x"}
    assert yaml.safe_load(with_vars(["run", "--vars={a: 1}"], {PATH_VAR: "/p"})[-1]) == {
        "a": 1,
        PATH_VAR: "/p",
    }
    with pytest.raises(ConfigError, match="not a YAML mapping"):
        with_vars(["run", "--vars", "[1, 2]"], {PATH_VAR: "/p"})


def test_project_and_profiles_are_in_the_repo() -> None:
    project = project_dir()
    assert (project / "dbt_project.yml").is_file()
    profiles = (project / "profiles.yml").read_text()
    assert "type: chdb" in profiles and "type: clickhouse" in profiles
    # Plain dbt without BANKDE_PII_SALT falls back to the same public salt as `bankde dbt`.
    assert f'"{DEV_SALT}"' in (project / "macros" / "pseudonymise.sql").read_text()


def test_dbt_finds_the_chdb_plugin_and_its_clickhouse_dependency() -> None:
    from dbt.adapters.factory import FACTORY

    credentials = FACTORY.load_plugin("chdb")
    assert credentials.__name__ == "ChdbCredentials"
    assert FACTORY.get_adapter_type_names("chdb") == ["chdb", "clickhouse"]
