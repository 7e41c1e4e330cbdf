"""Register the repo's debezium/*.json on the Connect worker, unchanged; their state; remove them."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg import sql

from bankde.errors import BankdeError, ConfigError
from bankde.kafka.cluster import rest, rest_get
from bankde.settings import Settings
from bankde.source.connection import SourceInfo, cdc_info, connect, owner_info
from bankde.source.tls import write_private

# The connector files' ${file:...} placeholders name this file relative to the worker's working
# directory, which is $BANKDE_HOME for the managed worker (so: $BANKDE_HOME/secrets/...).
SOURCE_PROPERTIES = Path("secrets") / "bankde-source.properties"
PLACEHOLDER = re.compile(r"\$\{file:([^:}]+):([^}]+)\}")
# libpq parameters the connector files carry; any other one in the DSN would be dropped.
CARRIED = ("host", "port", "dbname", "user", "password", "sslmode", "sslrootcert")


def config_dir() -> Path:
    """debezium/ of the checkout bankde runs from (the files a user POSTs to their own cluster)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "debezium"
        if (candidate / "README.md").is_file() and any(candidate.glob("postgres-*.json")):
            return candidate
    raise ConfigError(
        "debezium/ (the connector files) not found above the installed package: run bankde "
        "from its checkout (pip install -e .)"
    )


@dataclass(frozen=True)
class ConnectorFile:
    path: Path
    name: str
    config: dict[str, str]

    @property
    def tables(self) -> list[tuple[str, str]]:
        out = []
        for pattern in self.config["table.include.list"].split(","):
            schema, _, table = pattern.replace("\\.", ".").partition(".")
            out.append((schema, table))
        return out


def connector_files(directory: Path | None = None) -> list[ConnectorFile]:
    d = directory or config_dir()
    files = []
    for path in sorted(d.glob("postgres-*.json")):
        doc = json.loads(path.read_text())
        files.append(ConnectorFile(path, doc["name"], doc["config"]))
    return files


def source_properties(settings: Settings) -> dict[str, str]:
    """What the placeholders resolve to: the capture role's connection (never the app role's)."""
    info: SourceInfo = cdc_info(settings)
    extra = sorted(set(info.params) - set(CARRIED))
    if extra:
        raise ConfigError(
            f"BANKDE_PG_DSN: parameter(s) {', '.join(extra)} are not carried by debezium/*.json "
            "(host, port, dbname, user, password, sslmode, sslrootcert only): remove them"
        )
    p = info.params
    sslrootcert = p.get("sslrootcert", "")
    return {
        "host": p.get("host", "127.0.0.1"),
        "port": p.get("port", "5432"),
        "dbname": info.dbname,
        "user": p.get("user", settings.cdc_user),
        "password": p.get("password", ""),
        "sslmode": p.get("sslmode", settings.sslmode),
        "sslrootcert": str(Path(sslrootcert).expanduser().resolve()) if sslrootcert else "",
    }


def _escape(value: str) -> str:
    """A java.util.Properties value: backslashes, line breaks and leading blanks escaped."""
    out = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    return "\\" + out if out[:1] in (" ", "\t") else out


def write_source_properties(settings: Settings) -> Path:
    """$BANKDE_HOME/secrets/bankde-source.properties, mode 0600, swapped in whole."""
    path = settings.home_dir / SOURCE_PROPERTIES
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    body = "".join(f"{k}={_escape(v)}\n" for k, v in source_properties(settings).items())
    tmp = path.with_name(path.name + ".tmp")
    write_private(tmp, body.encode())
    tmp.replace(path)
    return path


def ensure_publications(settings: Settings, files: list[ConnectorFile]) -> None:
    """As the tables' owner: each connector's publication over its tables, and the capture role's
    SELECT on them (the files say publication.autocreate.mode=disabled: the capture role owns no
    table and cannot create one)."""
    from bankde.source.roles import grant_capture

    with connect(owner_info(settings)) as conn:
        for f in files:
            pub = f.config["publication.name"]
            grant_capture(conn, settings.cdc_user, f.tables)
            idents = sql.SQL(", ").join(sql.Identifier(s, t) for s, t in f.tables)
            exists = conn.execute(
                "SELECT 1 FROM pg_publication WHERE pubname = %s", (pub,)
            ).fetchone()
            verb = (
                "ALTER PUBLICATION {} SET TABLE {}"
                if exists
                else "CREATE PUBLICATION {} FOR TABLE {}"
            )
            conn.execute(sql.SQL(verb).format(sql.Identifier(pub), idents))
        conn.commit()


def register(settings: Settings, connect_url: str, files: list[ConnectorFile]) -> set[str]:
    """PUT each file's config under its name: creates or updates, so running it twice is safe.
    Returns the connectors that had failed and were restarted."""
    write_source_properties(settings)
    ensure_publications(settings, files)
    for f in files:
        rest(connect_url, "PUT", f"/connectors/{_q(f.name)}/config", f.config)
    # An unchanged config does not restart a failed connector: after fixing the cause (a
    # password, a publication), registering again must bring it back.
    failed = {s.name for s in connector_states(connect_url) if s.failed}
    for f in files:
        if f.name in failed:
            rest(
                connect_url,
                "POST",
                f"/connectors/{_q(f.name)}/restart?includeTasks=true&onlyFailed=true",
            )
    return failed


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


@dataclass
class TaskState:
    id: int
    state: str
    error: str | None = None


@dataclass
class ConnectorState:
    name: str
    state: str
    error: str | None = None
    tasks: list[TaskState] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return (
            self.state == "RUNNING"
            and bool(self.tasks)
            and all(t.state == "RUNNING" for t in self.tasks)
        )

    @property
    def failed(self) -> bool:
        return self.state == "FAILED" or any(t.state == "FAILED" for t in self.tasks)


def error_line(trace: str | None) -> str | None:
    """One line out of a Java stack trace: its deepest `Caused by:`, else its first line."""
    if not trace:
        return None
    lines = [ln.strip() for ln in trace.splitlines() if ln.strip()]
    causes = [ln.removeprefix("Caused by: ") for ln in lines if ln.startswith("Caused by:")]
    line = causes[-1] if causes else lines[0]
    # "org.apache.kafka.connect.errors.ConnectException: msg" -> "ConnectException: msg"
    head, sep, rest = line.partition(": ")
    if sep and " " not in head and "." in head:
        line = head.rsplit(".", 1)[1] + sep + rest
    return line[:400]


def connector_states(connect_url: str) -> list[ConnectorState]:
    data: dict[str, Any] = rest_get(connect_url, "/connectors?expand=status") or {}
    out = []
    for name in sorted(data):
        st = data[name].get("status", {})
        conn = st.get("connector", {})
        tasks = [
            TaskState(int(t.get("id", 0)), str(t.get("state")), error_line(t.get("trace")))
            for t in st.get("tasks", [])
        ]
        out.append(
            ConnectorState(name, str(conn.get("state")), error_line(conn.get("trace")), tasks)
        )
    return out


def wait_running(
    connect_url: str, names: list[str], timeout: float, restarted: set[str] | None = None
) -> list[ConnectorState]:
    """Until every named connector and its tasks run; a failed one raises with its error line.
    A `restarted` connector may still show its old FAILED state until the restart shows."""
    deadline = time.monotonic() + timeout
    stale = set(restarted or ())
    while True:
        states = {s.name: s for s in connector_states(connect_url) if s.name in names}
        stale -= {n for n, s in states.items() if not s.failed}
        failed = [s for n, s in states.items() if s.failed and n not in stale]
        if failed:
            s = failed[0]
            line = s.error or next((t.error for t in s.tasks if t.error), None)
            raise BankdeError(f"connector {s.name} failed: {line or 'no error reported'}")
        if len(states) == len(names) and all(s.running for s in states.values()):
            return list(states.values())
        if time.monotonic() > deadline:
            waiting = sorted(n for n in names if not (n in states and states[n].running))
            raise BankdeError(f"connectors not running after {timeout:.0f} s: {', '.join(waiting)}")
        time.sleep(0.5)


def remove(
    settings: Settings, connect_url: str, files: list[ConnectorFile], drop_slots: bool
) -> list[str]:
    """Stop each connector, delete its stored offsets and the connector (a new registration then
    snapshots afresh instead of resuming at another database's LSN), then drop its slot."""
    present = set(rest_get(connect_url, "/connectors") or [])
    removed = []
    for f in files:
        if f.name not in present:
            continue
        path = f"/connectors/{_q(f.name)}"
        rest(connect_url, "PUT", path + "/stop")
        _wait_state(connect_url, f.name, "STOPPED", 60.0)
        rest(connect_url, "DELETE", path + "/offsets")
        rest(connect_url, "DELETE", path)
        removed.append(f.name)
    if drop_slots:
        _drop_slots(settings, [f.config["slot.name"] for f in files])
    return removed


def _wait_state(connect_url: str, name: str, state: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = rest_get(connect_url, f"/connectors/{_q(name)}/status")
        if st.get("connector", {}).get("state") == state:
            return
        time.sleep(0.3)
    raise BankdeError(f"connector {name} did not reach {state} within {timeout:.0f} s")


def _drop_slots(settings: Settings, slots: list[str], timeout: float = 30.0) -> None:
    # The stopped task's walsender may linger a moment after Connect reports STOPPED.
    with connect(cdc_info(settings), autocommit=True) as conn:
        deadline = time.monotonic() + timeout
        for slot in slots:
            while True:
                row = conn.execute(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
                ).fetchone()
                if row is None:
                    break
                if not row[0]:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                    break
                if time.monotonic() > deadline:
                    raise BankdeError(f"replication slot {slot} is still in use: cannot drop it")
                time.sleep(0.3)
