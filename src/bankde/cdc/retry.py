"""Reconnects: which errors are a lost source, backoff, and the loop that survives them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from bankde.cdc.stream import BatchStats, Streamer, SyncResult
from bankde.console import err
from bankde.contracts import CaptureEngine, ProgressFn, RequestsStatus, Sink
from bankde.errors import SourceUnavailable
from bankde.settings import Settings

# Reconnect backoff after the source went away: doubles from the first to the last.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0


def is_disconnect(exc: BaseException) -> bool:
    """A lost or refused source connection (worth a reconnect), not a real error."""
    if isinstance(exc, SourceUnavailable):
        return True
    import psycopg
    import psycopg2

    if isinstance(exc, psycopg.OperationalError):
        return True
    if isinstance(exc, psycopg2.Error):
        code = exc.pgcode
        # No SQLSTATE: the socket went away ("server closed the connection", "no COPY in
        # progress"); class 08 connection exception; class 57 shutdown or admin termination.
        return code is None or code[:2] in ("08", "57")
    return False


class Backoff:
    def __init__(self) -> None:
        self.delay = BACKOFF_FIRST
        self.since: float | None = None

    def wait(self, stop: threading.Event | None) -> None:
        if self.since is None:
            self.since = time.monotonic()
        if stop is not None:
            stop.wait(self.delay)
        else:
            time.sleep(self.delay)
        self.delay = min(self.delay * 2, BACKOFF_MAX)

    def reset(self) -> None:
        self.delay = BACKOFF_FIRST
        self.since = None

    def elapsed(self) -> float:
        return 0.0 if self.since is None else time.monotonic() - self.since


def stream(
    settings: Settings,
    sink: Sink,
    engine_factory: Callable[[], CaptureEngine],
    *,
    until_lsn: Callable[[], int] | None,
    stop: threading.Event | None,
    progress: ProgressFn | None,
    batch_rows: int | None = None,
    batch_seconds: float | None = None,
    on_batch: Callable[[BatchStats], None] | None = None,
    max_outage: float | None = None,
    retry_at_start: bool = True,
    exact: bool = False,
) -> SyncResult:
    """Open (snapshot if needed), then stream until caught up with `until_lsn` or until `stop`
    (with `exact`, applying no transaction committed at or after `until_lsn`).

    `settings` are the engine's own (its slot). A lost source connection is retried with
    backoff (for at most `max_outage` seconds when given); without `retry_at_start`, a source
    that cannot be opened at all fails at once.
    """
    started = time.monotonic()
    streamer = Streamer(
        settings,
        sink,
        engine_factory,
        batch_rows,
        batch_seconds,
        on_batch,
    )
    backoff = Backoff()
    target = until_lsn() if until_lsn is not None else None
    streamer.result.target_lsn = target
    if exact:
        # Apply exactly the transactions committed before `target`, none after it.
        streamer.stop_before = target
    stream_started: float | None = None
    try:
        while stop is None or not stop.is_set():
            try:
                if streamer.engine is None:
                    streamer.open(progress)
                    progress = None  # a reconnect never snapshots with a bar again
                    if stream_started is None:
                        stream_started = time.monotonic()
                    backoff.reset()
                streamer.step(0.25)
                if target is not None:
                    engine = streamer.engine
                    assert engine is not None
                    if streamer.reached_stop or engine.caught_up(target):
                        streamer.flush()
                        break
                    if isinstance(engine, RequestsStatus) and not streamer.holding:
                        # psycopg2 reports the flush position it may have moved on a keepalive:
                        # the warehouse's offset goes there first.
                        streamer.record_idle_position(force=True)
                        engine.request_status()
            except Exception as exc:
                if not is_disconnect(exc):
                    raise
                if stream_started is None and not retry_at_start:
                    # The first open failed: a scheduler's micro-batch fails now, in one line,
                    # rather than after minutes of retries.
                    if isinstance(exc, SourceUnavailable):
                        raise
                    raise SourceUnavailable(
                        f"cannot stream from the source: {first_line(exc)}"
                    ) from None
                _on_disconnect(streamer, backoff, exc, stop, max_outage)
        else:
            # Stopped: write what is complete, so a clean shutdown loses no work.
            if streamer.engine is not None:
                try:
                    streamer.flush()
                except Exception as exc:
                    if not is_disconnect(exc):
                        raise
    finally:
        streamer.shutdown()
    res = streamer.result
    res.seconds = time.monotonic() - started
    res.stream_seconds = time.monotonic() - stream_started if stream_started else 0.0
    return res


def _on_disconnect(
    streamer: Streamer,
    backoff: Backoff,
    exc: BaseException,
    stop: threading.Event | None,
    max_outage: float | None,
) -> None:
    streamer.drop_unwritten()
    streamer.close()
    streamer.result.reconnects += 1
    if max_outage is not None and backoff.elapsed() > max_outage:
        raise SourceUnavailable(
            f"source unreachable for {max_outage:.0f}s, giving up: {first_line(exc)}"
        ) from None
    err.print(
        f"[yellow]source connection lost ({first_line(exc)}); reconnecting in "
        f"{backoff.delay:.1f}s[/yellow]"
    )
    backoff.wait(stop)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
