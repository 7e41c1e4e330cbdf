"""Publication, replica identity and replication slot: create, inspect, drop."""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from bankde.errors import BankdeError, CaptureError
from bankde.settings import Settings
from bankde.source.catalog import captured_tables, primary_keys
from bankde.source.connection import cdc_info, connect, owner_info, source_info
from bankde.source.roles import grant_capture

log = logging.getLogger(__name__)
_REPORTED_KEYLESS: set[tuple[str, str, str]] = set()

PROTO_VERSION = "1"  # enough for PG >= 13; we never ask for streamed in-progress transactions


@dataclass(frozen=True)
class SlotState:
    """One row of pg_replication_slots, with the lag measured against the current WAL."""

    name: str
    exists: bool
    active: bool = False
    active_pid: int | None = None
    confirmed_flush_lsn: int | None = None
    restart_lsn: int | None = None
    wal_status: str | None = None  # reserved | extended | unreserved | lost
    current_lsn: int = 0
    database: str | None = None

    @property
    def lag_bytes(self) -> int | None:
        if self.confirmed_flush_lsn is None:
            return None
        return max(0, self.current_lsn - self.confirmed_flush_lsn)

    @property
    def retained_bytes(self) -> int | None:
        if self.restart_lsn is None:
            return None
        return max(0, self.current_lsn - self.restart_lsn)

    @property
    def lost(self) -> bool:
        return self.wal_status == "lost"


def ensure_publication(settings: Settings) -> list[tuple[str, str]]:
    """Create (or widen) the publication over every captured table, as the application role.

    The capture role has only REPLICATION and SELECT, so it cannot own a publication; the table
    owner creates it. Tables get REPLICA IDENTITY FULL (also set by schema.sql): delete events
    then carry the whole old row, and an update's unchanged TOAST values come with its old row.
    Returns the published tables.
    """
    found = captured_tables(source_info(settings))
    if not found:
        raise CaptureError("no tables in schemas bank/truth to capture: run `bankde db init`")
    # A table without a primary key has nothing to order or deduplicate its rows by in the
    # warehouse: reported (once per process) and left out; every other table streams on.
    keys = primary_keys(source_info(settings))
    tables = [t for t in found if t in keys]
    database = source_info(settings).dbname
    for s, t in found:
        if (s, t) not in keys and (database, s, t) not in _REPORTED_KEYLESS:
            _REPORTED_KEYLESS.add((database, s, t))
            log.warning("%s.%s has no primary key: not captured (add one to capture it)", s, t)
    pub = settings.cdc_publication
    idents = sql.SQL(", ").join(sql.Identifier(s, t) for s, t in tables)
    # bankde-security: the owner makes the publication, and the capture role may read exactly
    # the published tables (roles.grant_capture).
    with connect(owner_info(settings)) as conn:
        grant_capture(conn, settings.cdc_user, tables)
        for s, t in tables:
            ident = conn.execute(
                "SELECT c.relreplident FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s",
                (s, t),
            ).fetchone()
            if ident and ident[0] != "f":
                conn.execute(
                    sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(sql.Identifier(s, t))
                )
        have = conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (pub,)
        ).fetchall()
        exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (pub,)).fetchone()
        if not exists:
            conn.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(pub), idents)
            )
        elif {(str(a), str(b)) for a, b in have} != set(tables):
            conn.execute(
                sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(sql.Identifier(pub), idents)
            )
        conn.commit()
    return tables


def published_tables_in(conn: psycopg.Connection[Any], publication: str) -> set[tuple[str, str]]:
    """The tables the publication covers now (any role may read pg_publication_tables)."""
    rows = conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
        (publication,),
    ).fetchall()
    return {(str(a), str(b)) for a, b in rows}


def drop_publication(settings: Settings) -> None:
    with connect(owner_info(settings), autocommit=True) as conn:  # bankde-security: owner
        conn.execute(
            sql.SQL("DROP PUBLICATION IF EXISTS {}").format(
                sql.Identifier(settings.cdc_publication)
            )
        )


def slot_state(settings: Settings) -> SlotState:
    """The slot as the server sees it (readable by the capture role)."""
    name = settings.cdc_slot
    with connect(cdc_info(settings), autocommit=True) as conn:
        row = conn.execute(
            """
            SELECT active, active_pid, confirmed_flush_lsn::text, restart_lsn::text, wal_status,
                   pg_current_wal_lsn()::text, database
            FROM pg_replication_slots WHERE slot_name = %s
            """,
            (name,),
        ).fetchone()
        if row is None:
            cur = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            return SlotState(name, False, current_lsn=_lsn(cur[0] if cur else None) or 0)
    active, pid, confirmed, restart, wal_status, current, database = row
    return SlotState(
        name,
        True,
        bool(active),
        pid,
        _lsn(confirmed),
        _lsn(restart),
        wal_status,
        _lsn(current) or 0,
        database,
    )


def current_wal_lsn(settings: Settings) -> int:
    with connect(cdc_info(settings), autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    return _lsn(row[0] if row else None) or 0


def drop_slot(settings: Settings, wait: float = 10.0) -> bool:
    """Drop the slot if it exists; a capture still attached is terminated first. True if dropped."""
    import time

    name = settings.cdc_slot
    deadline = time.monotonic() + wait
    with connect(cdc_info(settings), autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (name,)
            ).fetchone()
            if row is None:
                return False
            if row[0] is None:
                try:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
                    return True
                except Exception as exc:  # raced with a reconnecting capture: retry
                    if time.monotonic() > deadline:
                        raise CaptureError(f"cannot drop replication slot {name}: {exc}") from None
            elif time.monotonic() > deadline:
                raise CaptureError(
                    f"replication slot {name} is in use by pid {row[0]}: stop `bankde cdc run` first"
                )
            time.sleep(0.2)


def lost_slot_message(settings: Settings) -> str:
    return (
        f"replication slot {settings.cdc_slot} was invalidated by max_slot_wal_keep_size (WAL it "
        "needed is gone, changes were lost): run `bankde cdc resync` to snapshot again"
    )


def _lsn(text: str | None) -> int | None:
    if not text:
        return None
    from bankde.cdc.envelope import parse_lsn

    return parse_lsn(text)


@dataclass(frozen=True)
class Pending:
    """What a peek at an idle slot found: is a committed captured change waiting, and since when."""

    changes: bool
    oldest_commit_us: int | None = None  # commit time (µs, Unix epoch) of the first one waiting


def peek_pending(settings: Settings, timeout_ms: int | None = None) -> Pending | None:
    """Peek, never consume, the first committed change of a captured table the slot holds.

    Runs as the capture role (REPLICATION is enough for pg_logical_slot_peek_binary_changes),
    with the options the capture streams with, so WAL of tables outside the publication decodes
    to nothing. None when it cannot tell: the slot is streaming to a consumer right now, or
    decoding up to the first change took longer than `timeout_ms`.
    """
    from bankde.cdc.pgoutput import PG_EPOCH_US

    with connect(cdc_info(settings), autocommit=True) as conn:
        if timeout_ms is not None:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(timeout_ms),))
        try:
            # upto_nchanges=1 stops decoding after the first transaction with a change in it.
            row = conn.execute(
                "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, 1, "
                "'proto_version', %s, 'publication_names', %s) LIMIT 1",
                (settings.cdc_slot, PROTO_VERSION, settings.cdc_publication),
            ).fetchone()
        except (psycopg.errors.ObjectInUse, psycopg.errors.QueryCanceled):
            return None
    if row is None:
        return Pending(False)
    data = bytes(row[0])
    if data[:1] != b"B":
        return Pending(True)
    # Begin: 'B', final LSN (int64), commit time (int64 µs since 2000-01-01), xid (int32).
    (commit_ts,) = struct.unpack_from("!q", data, 9)
    return Pending(True, commit_ts + PG_EPOCH_US)


def walsender_lag(settings: Settings, pid: int) -> float | None:
    """Seconds the consumer of an active slot lags, from pg_stat_replication of its walsender:
    flush_lag (what the consumer confirmed written), else replay_lag; 0.0 once the server has
    reset them after the consumer confirmed all it was sent. None when that is not visible: the
    figures need superuser or pg_read_all_stats (not the capture role), so ask as the owner
    (bankde-security: the managed cluster's owner role is granted pg_read_all_stats)."""
    with connect(owner_info(settings), autocommit=True) as conn:
        row = conn.execute(
            "SELECT EXTRACT(epoch FROM coalesce(flush_lag, replay_lag))::float8, "
            "flush_lsn >= sent_lsn, sent_lsn IS NOT NULL FROM pg_stat_replication WHERE pid = %s",
            (pid,),
        ).fetchone()
    if row is None or not row[2]:
        return None
    lag, caught_up, _ = row
    if lag is not None:
        return round(float(lag), 3)
    return 0.0 if caught_up else None


# How often the wait for a slot's creation says what it waits for.
SLOT_WAIT_REPORT_SECONDS = 5.0


class SlotCreationWatch:
    """While CREATE_REPLICATION_SLOT waits for the transactions open when it began (a logical
    slot needs them all ended for its consistent point), name them on stderr (pid, transaction
    age, state) and, after BANKDE_CDC_SLOT_WAIT_SECONDS, cancel the creation: `gave_up` and
    `message` then say why, and the caller raises CaptureError(message).

    Use as a context manager around the CREATE on `conn` (a psycopg2 connection whose backend
    is `pid`); cancel() is safe from the watching thread.
    """

    def __init__(self, settings: Settings, conn: Any, pid: int) -> None:
        self.settings = settings
        self.conn = conn
        self.pid = pid
        self.gave_up = False
        self.message = ""
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bankde-slot-wait", daemon=True)

    def __enter__(self) -> SlotCreationWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def blockers(self) -> list[tuple[int, float | None, str | None]]:
        """(pid, transaction age in seconds or None when hidden, state) of what blocks it.

        Other roles' transaction start is visible only to a superuser or pg_read_all_stats:
        on the managed cluster its superuser looks; elsewhere the capture role, which then
        names the pid without the age unless granted pg_read_all_stats."""
        from bankde.source.connection import admin_info

        info = cdc_info(self.settings) if self.settings.external_source else None
        if info is None:
            info = admin_info(self.settings)
        with connect(info, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT b.pid, extract(epoch FROM now() - a.xact_start)::float8, a.state "
                "FROM unnest(pg_blocking_pids(%s)) AS b(pid) "
                "LEFT JOIN pg_stat_activity a ON a.pid = b.pid ORDER BY 2 DESC NULLS LAST",
                (self.pid,),
            ).fetchall()
        return [(int(p), None if a is None else float(a), s) for p, a, s in rows]

    def _watch(self) -> None:
        from bankde.console import err

        limit = self.settings.cdc_slot_wait_seconds
        started = time.monotonic()
        reported = 0.0
        while not self._done.wait(min(1.0, limit)):
            waited = time.monotonic() - started
            try:
                blockers = self.blockers()
            except (psycopg.Error, BankdeError):
                continue
            if not blockers:
                continue
            what = "; ".join(
                f"pid {p} ({'open for ' + f'{a:.0f} s' if a is not None else 'age not visible'}"
                f"{', ' + s if s else ''})"
                for p, a, s in blockers[:3]
            )
            if waited >= limit:
                self.message = (
                    f"gave up creating replication slot {self.settings.cdc_slot} after "
                    f"{limit:g} s: it waits for the transaction(s) of {what} to end; end them "
                    "(commit, roll back or pg_terminate_backend) and run again, or raise "
                    "BANKDE_CDC_SLOT_WAIT_SECONDS"
                )
                self.gave_up = True
                self.conn.cancel()
                return
            if waited - reported >= SLOT_WAIT_REPORT_SECONDS or reported == 0.0:
                reported = waited
                err.print(
                    f"creating replication slot {self.settings.cdc_slot}: waiting for the "
                    f"transaction(s) of {what} to end (giving up after {limit:g} s)",
                    soft_wrap=True,
                )


@contextmanager
def consistent_point(settings: Settings) -> Iterator[tuple[int, str]]:
    """(LSN, exported snapshot) of one instant: a temporary logical slot's consistent point and
    the snapshot exported with it, valid inside the block (the slot goes with the connection).
    Every transaction committed before the LSN is in the snapshot, none after it."""
    import psycopg2
    import psycopg2.errors
    import psycopg2.extras

    from bankde.cdc.envelope import parse_lsn
    from bankde.source.connection import capture_session_sql

    conn = psycopg2.connect(
        cdc_info(settings).dsn,
        connection_factory=psycopg2.extras.LogicalReplicationConnection,
        connect_timeout=10,
        application_name="bankde_check",
    )
    try:
        cur = conn.cursor()
        for stmt in capture_session_sql():
            cur.execute(stmt)
        cur.execute("SELECT pg_backend_pid()")
        pid = int(cur.fetchone()[0])
        name = f"{settings.cdc_slot[:50]}_chk_{pid}"[:63]
        with SlotCreationWatch(settings, conn, pid) as watch:
            try:
                cur.execute(
                    f'CREATE_REPLICATION_SLOT "{name}" TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT'
                )
            except psycopg2.errors.QueryCanceled:
                if watch.gave_up:
                    raise CaptureError(watch.message) from None
                raise
        _slot, consistent, snapshot, _plugin = cur.fetchone()
        yield parse_lsn(consistent), str(snapshot)
    finally:
        conn.close()
