"""Serving the process's embedded warehouse on 127.0.0.1 (uvicorn on a thread), published in the lock."""

from __future__ import annotations

import errno
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from bankde.errors import BankdeError, ConfigError
from bankde.settings import Settings

if TYPE_CHECKING:
    from bankde.warehouse.session import WarehouseSession

HOST = "127.0.0.1"
# In-flight requests get this long to finish when the server stops.
GRACEFUL_SECONDS = 30


def secrets_dir(settings: Settings) -> Path:
    return settings.home_dir / "secrets"


def bind(port: int, strict: bool) -> socket.socket:
    """A listening socket on 127.0.0.1:`port`. Taken: ConfigError naming it when `strict`, else any
    free port (the lock file tells clients which one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            sock.close()
            raise
        if strict:
            sock.close()
            raise ConfigError(
                f"port {port} on {HOST} is already in use: stop what listens there or choose "
                "another with --port (or BANKDE_WH_HTTP_PORT)"
            ) from None
        sock.bind((HOST, 0))
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


class WarehouseServer:
    """ClickHouse's HTTP interface for the warehouse this process owns, on a background thread.

    `start` binds, starts uvicorn and publishes the URL in the warehouse lock file; `stop` stops
    accepting, lets in-flight requests finish (up to GRACEFUL_SECONDS), withdraws the URL.
    """

    def __init__(
        self,
        settings: Settings,
        session: WarehouseSession,
        port: int | None = None,
        strict_port: bool = True,
    ) -> None:
        if not session.embedded:
            raise ConfigError(
                "only an embedded warehouse can be served; BANKDE_CLICKHOUSE_URL already points at "
                "a server"
            )
        self.settings = settings
        self.session = session
        self.port = settings.wh_http_port if port is None else port
        self.strict_port = strict_port
        self.url = ""
        self._thread: threading.Thread | None = None
        self._server: object | None = None
        self._engine: object | None = None
        self._spool: Path | None = None
        self._failure: BaseException | None = None

    def start(self) -> str:
        import uvicorn

        from bankde.warehouse.server.app import ServerInfo, create_app
        from bankde.warehouse.server.engine import Engine
        from bankde.warehouse.server.users import Authenticator, ensure_passwords

        sock = bind(self.port, self.strict_port)
        port = int(sock.getsockname()[1])
        passwords = ensure_passwords(secrets_dir(self.settings))
        version, tz = self.session.warehouse().query("SELECT version(), timezone()")[0]
        self._spool = Path(tempfile.mkdtemp(prefix="bankde-wh-spool-"))
        engine = Engine(self.session.location)
        self._engine = engine
        info = ServerInfo(str(version), str(tz), "bankde", self._spool)
        app = create_app(engine, Authenticator(passwords), info)
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_SECONDS,
        )
        server = uvicorn.Server(config)
        self._server = server
        started = threading.Event()

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # surfaced by start() / stop()
                self._failure = exc
            finally:
                started.set()

        self._thread = threading.Thread(target=run, name="bankde-wh-http", daemon=True)
        self._thread.start()
        while not server.started and not started.wait(0.05):
            pass
        if self._failure is not None or not server.started:
            raise BankdeError(f"warehouse HTTP server did not start: {self._failure}")
        self.url = f"http://{HOST}:{port}"
        self.session.owner_lock().record_url(self.url, secrets_dir(self.settings))
        return self.url

    def stop(self) -> None:
        from bankde.warehouse.server.engine import Engine

        self.session.owner_lock().record_url(None)
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True  # type: ignore[attr-defined]
            self._thread.join(GRACEFUL_SECONDS + 5)
        if isinstance(self._engine, Engine):
            self._engine.close()
        if self._spool is not None:
            shutil.rmtree(self._spool, ignore_errors=True)
            self._spool = None
        self._server = None


def serve_until_signal(settings: Settings, port: int | None) -> None:
    """`bankde wh serve`: own the warehouse and serve it until SIGINT/SIGTERM."""
    from bankde.console import err
    from bankde.warehouse.ddl import apply_schema
    from bankde.warehouse.server.users import READER, WRITER, password_file
    from bankde.warehouse.session import open_session

    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    with open_session(settings) as session:
        apply_schema(session.warehouse())
        server = WarehouseServer(settings, session, port, strict_port=True)
        server.start()
        old_int = signal.signal(signal.SIGINT, handler)
        old_term = signal.signal(signal.SIGTERM, handler)
        try:
            sdir = secrets_dir(settings)
            err.print(
                f"serving warehouse {session.location} at {server.url} (ClickHouse HTTP interface)\n"
                f"  user {WRITER} (read-write), password in {password_file(sdir, WRITER)}\n"
                f"  user {READER} (readonly), password in {password_file(sdir, READER)}\n"
                "Ctrl-C stops (in-flight requests finish first)"
            )
            while not stop.wait(0.5):
                pass
            err.print("stopping: finishing in-flight requests…")
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
            server.stop()
