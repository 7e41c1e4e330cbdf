"""The chDB side of the front: a few engine connections (handles), sessions, per-request settings."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from bankde.warehouse.server.protocol import (
    SESSION_IS_LOCKED,
    SESSION_NOT_FOUND,
    TOO_MANY_SIMULTANEOUS_QUERIES,
    ClickHouseError,
    engine_error,
    first_keyword,
)
from bankde.warehouse.server.users import User

_SETTING_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Statements that leave state on the connection: a sessionless request must not leak it to the
# next request that gets the same pooled handle, so that handle is closed after use instead.
_STATEFUL = frozenset({"SET", "USE"})
_TEMPORARY_RE = re.compile(r"\bTEMPORARY\b", re.IGNORECASE)
CHECKOUT_TIMEOUT = 60.0


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Handle:
    """One chDB connection to the process's engine: one statement at a time (chDB's rule), its own
    settings and current database, like one ClickHouse server session."""

    def __init__(self, path: str, user: User, max_threads: int | None) -> None:
        import chdb

        self.conn: Any = chdb.connect(path)
        self.user = user
        self.database = "default"
        self.tainted = False
        self.closed = False
        # Settings this handle runs with when a request asks for none, and the request settings
        # it has now (pooled handles keep them between requests: clients send the same few on
        # every request, so most requests change nothing).
        self.baseline: dict[str, str] = {}
        self.current: dict[str, str] = {}
        if max_threads is not None:
            self.conn.query(f"SET max_threads = {int(max_threads)}", "TabSeparated")
            self.baseline["max_threads"] = str(int(max_threads))
        # Last: a read-only handle may not change `readonly` afterwards (ClickHouse's rule).
        if user.readonly:
            self.conn.query(f"SET readonly = {int(user.readonly)}", "TabSeparated")

    def query(self, sql: str, fmt: str, params: Mapping[str, str] | None = None) -> Any:
        try:
            return self.conn.query(sql, fmt, params=dict(params or {}))
        except Exception as exc:
            raise engine_error(exc) from None

    def send_query(self, sql: str, fmt: str, params: Mapping[str, str] | None = None) -> Any:
        try:
            return self.conn.send_query(sql, fmt, params=dict(params or {}))
        except Exception as exc:
            raise engine_error(exc) from None

    def use(self, database: str | None) -> None:
        wanted = database or "default"
        if wanted != self.database:
            self.query(f"USE `{wanted.replace('`', '``')}`", "TabSeparated")
            self.database = wanted

    def switch_settings(self, settings: Mapping[str, str]) -> None:
        """Pooled handles: make `settings` the request settings in force, changing only what
        differs from the previous request's (the rest back to the baseline)."""
        for name in settings:
            if not _SETTING_NAME_RE.match(name):
                raise ClickHouseError(115, f"Unknown setting '{name}'", "UNKNOWN_SETTING")
        try:
            for name in [n for n in self.current if n not in settings]:
                base = self.baseline.get(name)
                self.query(f"SET {name} = {'DEFAULT' if base is None else _quote(base)}", "TSV")
                del self.current[name]
            for name, value in settings.items():
                if self.current.get(name) != value:
                    self.current.pop(name, None)
                    self.query(f"SET {name} = {_quote(value)}", "TabSeparated")
                    self.current[name] = value
        except ClickHouseError:
            # Half switched: this handle's settings are unknown now; it serves no one else.
            self.tainted = True
            raise

    def apply_settings(self, settings: Mapping[str, str]) -> dict[str, tuple[str, bool]]:
        """SET each setting for the next statement; returns what restore_settings puts back."""
        if not settings:
            return {}
        for name in settings:
            if not _SETTING_NAME_RE.match(name):
                raise ClickHouseError(115, f"Unknown setting '{name}'", "UNKNOWN_SETTING")
        names = ", ".join(_quote(n) for n in settings)
        # JSONEachRow: values such as max_threads = 'auto(2)' survive byte for byte.
        res = self.query(
            f"SELECT name, value, changed FROM system.settings WHERE name IN ({names})",
            "JSONEachRow",
        )
        snapshot: dict[str, tuple[str, bool]] = {}
        for line in res.bytes().splitlines():
            row = json.loads(line)
            snapshot[row["name"]] = (row["value"], bool(row["changed"]))
        try:
            for name, value in settings.items():
                snapshot.setdefault(name, ("", False))
                self.query(f"SET {name} = {_quote(value)}", "TabSeparated")
        except ClickHouseError:
            self.restore_settings(snapshot)
            raise
        return snapshot

    def restore_settings(self, snapshot: Mapping[str, tuple[str, bool]]) -> None:
        try:
            for name, (value, changed) in snapshot.items():
                literal = value if value.startswith("'") else _quote(value)
                self.query(f"SET {name} = {literal if changed else 'DEFAULT'}", "TabSeparated")
        except ClickHouseError:
            # A handle whose settings cannot be put back must not serve another request.
            self.tainted = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with suppress(Exception):
                self.conn.close()


@dataclass
class _Session:
    handle: Handle
    timeout: float
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False


class Engine:
    """Hands out handles: a small pool per user for sessionless requests, one handle per session
    (`session_id`, idle-expired after `session_timeout` seconds like a server's sessions).

    chDB runs statements of different connections concurrently, so a long query holds only its
    own handle; the CDC writer in the owning process has its own connection and is never queued
    behind a reader. Read-only users are BI readers: their statements run with
    `reader_max_threads` threads and at most `reader_slots` at a time (the rest queue), so however
    many dashboards query, they use at most that much CPU and CDC and dbt keep the rest.
    """

    def __init__(
        self,
        path: str,
        pool_size: int = 4,
        max_sessions: int = 64,
        reader_max_threads: int | None = None,
        reader_slots: int | None = None,
    ) -> None:
        self.path = path
        self.pool_size = pool_size
        self.max_sessions = max_sessions
        cores = os.cpu_count() or 2
        self.reader_max_threads = reader_max_threads or max(1, cores // 2)
        self._reader_gate = threading.BoundedSemaphore(reader_slots or max(1, cores // 2))
        self._cond = threading.Condition()
        self._idle: dict[str, list[Handle]] = {}
        self._open: dict[str, int] = {}
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._closed = False

    @contextmanager
    def admit(self, user: User) -> Iterator[None]:
        """Held while one statement (or one streamed block) of `user` runs on the engine."""
        if not user.readonly:
            yield
            return
        if not self._reader_gate.acquire(timeout=CHECKOUT_TIMEOUT):
            raise ClickHouseError(
                TOO_MANY_SIMULTANEOUS_QUERIES,
                f"Too many simultaneous queries of read-only users: waited {CHECKOUT_TIMEOUT:g}s",
                "TOO_MANY_SIMULTANEOUS_QUERIES",
            )
        try:
            yield
        finally:
            self._reader_gate.release()

    def _new_handle(self, user: User) -> Handle:
        try:
            return Handle(self.path, user, self.reader_max_threads if user.readonly else None)
        except ClickHouseError:
            raise
        except Exception as exc:
            raise engine_error(exc) from None

    @contextmanager
    def checkout(
        self,
        user: User,
        session_id: str | None = None,
        session_timeout: float = 60.0,
        session_check: bool = False,
    ) -> Iterator[Handle]:
        if session_id:
            with self._session(user, session_id, session_timeout, session_check) as handle:
                yield handle
            return
        handle = self._take(user)
        try:
            yield handle
        finally:
            self._give_back(user, handle)

    def _take(self, user: User) -> Handle:
        deadline = time.monotonic() + CHECKOUT_TIMEOUT
        with self._cond:
            while True:
                if self._closed:
                    raise ClickHouseError(210, "the server is shutting down", "NETWORK_ERROR")
                idle = self._idle.setdefault(user.name, [])
                if idle:
                    return idle.pop()
                if self._open.get(user.name, 0) < self.pool_size:
                    self._open[user.name] = self._open.get(user.name, 0) + 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ClickHouseError(
                        TOO_MANY_SIMULTANEOUS_QUERIES,
                        f"Too many simultaneous queries: all {self.pool_size} connections of user "
                        f"{user.name} stayed busy for {CHECKOUT_TIMEOUT:g}s",
                        "TOO_MANY_SIMULTANEOUS_QUERIES",
                    )
                self._cond.wait(left)
        try:
            return self._new_handle(user)
        except BaseException:
            with self._cond:
                self._open[user.name] -= 1
                self._cond.notify()
            raise

    def _give_back(self, user: User, handle: Handle) -> None:
        with self._cond:
            if handle.tainted or self._closed:
                handle.close()
                self._open[user.name] -= 1
            else:
                self._idle.setdefault(user.name, []).append(handle)
            self._cond.notify()

    @contextmanager
    def _session(
        self, user: User, session_id: str, timeout: float, check: bool
    ) -> Iterator[Handle]:
        key = (user.name, session_id)
        with self._cond:
            self._expire_sessions()
            session = self._sessions.get(key)
            if session is None:
                if check:
                    raise ClickHouseError(
                        SESSION_NOT_FOUND, f"Session {session_id} not found", "SESSION_NOT_FOUND"
                    )
                if len(self._sessions) >= self.max_sessions and not self._evict_one():
                    raise ClickHouseError(
                        TOO_MANY_SIMULTANEOUS_QUERIES,
                        f"Too many sessions: {self.max_sessions} are open and busy",
                        "TOO_MANY_SIMULTANEOUS_QUERIES",
                    )
                session = _Session(self._new_handle(user), timeout)
                self._sessions[key] = session
            if session.busy:
                raise ClickHouseError(
                    SESSION_IS_LOCKED,
                    f"Session {session_id} is locked by a concurrent client",
                    "SESSION_IS_LOCKED",
                )
            session.busy = True
            session.timeout = timeout
        try:
            yield session.handle
        finally:
            with self._cond:
                session.busy = False
                session.last_used = time.monotonic()
                if session.handle.tainted or self._closed:
                    session.handle.close()
                    self._sessions.pop(key, None)

    def _expire_sessions(self) -> None:
        now = time.monotonic()
        for key, s in list(self._sessions.items()):
            if not s.busy and now - s.last_used > s.timeout:
                s.handle.close()
                del self._sessions[key]

    def _evict_one(self) -> bool:
        idle = [(s.last_used, k) for k, s in self._sessions.items() if not s.busy]
        if not idle:
            return False
        _, key = min(idle)
        self._sessions.pop(key).handle.close()
        return True

    def close(self) -> None:
        """Close every idle handle; busy ones close when their request ends."""
        with self._cond:
            self._closed = True
            for handles in self._idle.values():
                for h in handles:
                    h.close()
            self._idle.clear()
            for key, s in list(self._sessions.items()):
                if not s.busy:
                    s.handle.close()
                    del self._sessions[key]
            self._cond.notify_all()


def leaves_state(sql: str) -> bool:
    """True for statements whose effect outlives the request (SET, USE, temporary tables)."""
    return first_keyword(sql) in _STATEFUL or bool(_TEMPORARY_RE.search(sql))
