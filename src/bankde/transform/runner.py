"""Run dbt in this process (dbtRunner) against bankde's warehouse, holding the warehouse lock."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bankde.errors import BankdeError, ConfigError

if TYPE_CHECKING:
    from bankde.settings import Settings
    from bankde.warehouse.session import WarehouseSession

# dbt subcommands `bankde dbt` passes through; everything after them goes to dbt verbatim.
COMMANDS = ("build", "run", "test", "docs", "snapshot", "compile", "ls", "debug", "parse", "seed")

# Public, so tokens made with it are reversible by anyone with a list of candidate values; the
# same default is in macros/pseudonymise.sql for plain dbt.
DEV_SALT = "bankde-dev-salt-not-secret"


# dbt node statuses that mean "this node failed" (warn, skipped, pass, success do not).
FAILED_STATUSES = frozenset({"error", "fail", "runtime error"})


class DbtFailed(BankdeError):
    """dbt ran but a model or test failed (details are in dbt's own output above)."""


@dataclass(frozen=True)
class DbtResult:
    """What a dbt invocation did: success, and per node its name, status and timing."""

    success: bool
    nodes: tuple[tuple[str, str, float], ...]

    @property
    def failed(self) -> list[str]:
        """Names of the nodes that failed: a model that errored or a test that failed."""
        return [name for name, status, _ in self.nodes if status in FAILED_STATUSES]


def project_dir() -> Path:
    """The repo's dbt project (BANKDE_DBT_PROJECT_DIR overrides, for installed copies)."""
    override = os.environ.get("BANKDE_DBT_PROJECT_DIR")
    if override:
        return Path(override).resolve()
    return Path(__file__).resolve().parents[3] / "dbt"


def wh_prefix(settings: Settings) -> str:
    """Database-name prefix of this warehouse (test isolation); '' in normal use."""
    return settings.wh_prefix


def warehouse_path(settings: Settings) -> str:
    """The embedded warehouse directory exactly as the warehouse client spells it (realpath)."""
    from bankde.warehouse.client import warehouse_path as _path

    return _path(settings)


def pii_salt(settings: Settings) -> str:
    """The salt of the stg_ PII tokens: BANKDE_PII_SALT (environment or .env), else the dev one."""
    salt = settings.pii_salt or DEV_SALT
    if salt == DEV_SALT:
        _warn_dev_salt()
    return salt


@cache
def _warn_dev_salt() -> None:
    # Once per process: a run calls dbt several times.
    print(
        "bankde: warning: BANKDE_PII_SALT is not set, PII is hashed with the public development "
        "salt; set your own for real data",
        file=sys.stderr,
    )


def dbt_env(
    settings: Settings, prefix: str | None = None, threads: int | None = None
) -> dict[str, str]:
    """Environment variables profiles.yml and the models read, derived from bankde's settings."""
    home = settings.home_dir
    layer_prefix = wh_prefix(settings) if prefix is None else prefix
    # Artifacts per prefix: pipelines sharing a BANKDE_HOME never share dbt's target/ directory.
    artifacts = home / "dbt" / (layer_prefix.rstrip("_") or "default")
    env = {
        "BANKDE_HOME": str(home),
        "BANKDE_WH_PREFIX": layer_prefix,
        "DBT_TARGET_PATH": str(artifacts / "target"),
        "DBT_LOG_PATH": str(artifacts / "logs"),
        "BANKDE_PII_SALT": pii_salt(settings),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
    if threads is not None:
        env["BANKDE_DBT_THREADS"] = str(threads)
    if settings.clickhouse_url:
        url = urlsplit(settings.clickhouse_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(
                f"BANKDE_CLICKHOUSE_URL={settings.clickhouse_url!r}: expected http(s)://user:pass@host:port"
            )
        env.update(
            {
                "BANKDE_DBT_TARGET": "clickhouse",
                "BANKDE_CH_HOST": url.hostname,
                "BANKDE_CH_PORT": str(url.port or (8443 if url.scheme == "https" else 8123)),
                "BANKDE_CH_USER": url.username or "default",
                "BANKDE_CH_PASSWORD": url.password or "",
                "BANKDE_CH_SECURE": "True" if url.scheme == "https" else "False",
            }
        )
    else:
        env["BANKDE_DBT_TARGET"] = "chdb"
    return env


@contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# The profile field the runner fills through `--vars` (dbt/profiles.yml reads it with var()).
PATH_VAR = "bankde_warehouse_dir"


def with_vars(args: Sequence[str], extra: Mapping[str, str]) -> list[str]:
    """`args` with `extra` merged into their `--vars` (dbt keeps only the last `--vars`, so a
    caller's own `--vars '{cdc_pin_version: 3}'` and ours must be one mapping)."""
    import yaml

    out: list[str] = []
    merged: dict[str, object] = {}
    it = iter(args)
    for arg in it:
        if arg == "--vars" or arg.startswith("--vars="):
            text = arg.partition("=")[2] if "=" in arg else next(it, "")
            try:
                given = yaml.safe_load(text) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"--vars {text!r}: not a YAML mapping ({exc})") from None
            if not isinstance(given, dict):
                raise ConfigError(f"--vars {text!r}: not a YAML mapping")
            merged.update(given)
        else:
            out.append(arg)
    merged.update(extra)
    return [*out, "--vars", yaml.safe_dump(merged, default_flow_style=True).strip()]


# Parsed projects a long-running process keeps (`bankde run` builds every interval): a build
# given its manifest skips dbt's parse, seconds on this project even when partial. Keyed by all
# the parse reads: the project's files (path, size, mtime), the environment and the --vars.
_manifests: dict[tuple[object, ...], Any] = {}


def _project_files(project: Path) -> tuple[tuple[str, int, int], ...]:
    found: list[tuple[str, int, int]] = []
    for root, dirs, files in os.walk(project):
        # dbt's own output, when plain dbt ran here without bankde's DBT_TARGET_PATH.
        dirs[:] = [d for d in dirs if d not in ("target", "logs", "dbt_packages")]
        for name in files:
            st = os.stat(os.path.join(root, name))
            found.append((os.path.join(root, name), st.st_size, st.st_mtime_ns))
    return tuple(sorted(found))


def _parsed_manifest(project: Path, env: Mapping[str, str], options: list[str]) -> Any:
    """The project parsed with `options` (--project-dir ... --vars ...), from this process's
    cache while nothing it depends on changed. Runs inside run_dbt's environment."""
    from dbt.cli.main import dbtRunner

    key = (_project_files(project), tuple(sorted(env.items())), tuple(options))
    manifest = _manifests.get(key)
    if manifest is None:
        res = dbtRunner().invoke(["--quiet", "parse", *options])
        if not res.success or res.result is None:
            raise DbtFailed(f"dbt parse failed: {res.exception or 'see dbt logs'}")
        _manifests.clear()
        manifest = _manifests[key] = res.result
    return manifest


def run_dbt(
    args: Sequence[str],
    settings: Settings,
    session: WarehouseSession,
    *,
    prefix: str | None = None,
    threads: int | None = None,
    quiet: bool = False,
    keep_manifest: bool = False,
) -> DbtResult:
    """Invoke dbt with `args` (e.g. ["build", "--select", "marts"]) on the caller's `session`.

    Runs in this process, and the chdb adapter works on `session`: the runner gives the
    profile its path (`--vars`) and lends the session for the invocation (see
    dbt.adapters.chdb.client.lend_session). A session that is a client of a served warehouse
    makes dbt use dbt-clickhouse's `clickhouse` target on that URL instead. Never raises for
    failed models or tests: the result says so. Raises ConfigError for unknown commands.
    With keep_manifest the parsed project is kept in this process for the next invocation
    (until a project file, the environment or the vars change) and dbt writes no JSON
    artifacts: for repeated builds.
    """
    from dbt.cli.main import dbtRunner

    if not args or args[0] not in COMMANDS:
        raise ConfigError(
            f"dbt command must be one of {', '.join(COMMANDS)} (got {' '.join(args)!r})"
        )
    project = project_dir()
    if not (project / "dbt_project.yml").is_file():
        raise ConfigError(f"no dbt project at {project} (set BANKDE_DBT_PROJECT_DIR)")
    # Served by another process: dbt-clickhouse's own `clickhouse` target over HTTP.
    from bankde.warehouse.discovery import resolve

    settings = resolve(settings)
    env = dbt_env(settings, prefix=prefix, threads=threads)
    from dbt.adapters.chdb.client import lend_session

    path = warehouse_path(settings)
    if session.embedded and session.location != path:
        raise ConfigError(
            f"the session holds the warehouse {session.location}, the settings name {path}: "
            "run dbt on the warehouse the session holds"
        )
    full = with_vars(
        [*args, "--project-dir", str(project), "--profiles-dir", str(project)], {PATH_VAR: path}
    )
    if quiet:
        full = ["--quiet", *full]
    with _environ(env), lend_session(path, session):
        manifest = None
        if keep_manifest:
            # The vars and where dbt finds the project: what a parse of the same project reads.
            at = full.index("--project-dir")
            manifest = _parsed_manifest(project, env, full[at:])
            # Repeated builds: not rewriting manifest.json and run_results.json (megabytes of
            # JSON) each time; the result returned here says what ran.
            full = ["--no-write-json", *full]
        res = dbtRunner(manifest=manifest).invoke(full)
    nodes: list[tuple[str, str, float]] = []
    result = res.result
    for r in getattr(result, "results", None) or []:
        node = getattr(r, "node", None)
        name = getattr(node, "name", "?") if node is not None else "?"
        nodes.append(
            (str(name), str(getattr(r, "status", "?")), float(getattr(r, "execution_time", 0.0)))
        )
    if res.exception is not None and not nodes:
        from dbt.cli.exceptions import DbtUsageException

        if isinstance(res.exception, DbtUsageException):
            raise ConfigError(f"dbt {args[0]}: {res.exception}")
        raise DbtFailed(f"dbt {args[0]} could not run: {res.exception}")
    return DbtResult(success=bool(res.success), nodes=tuple(nodes))
