"""The embedded warehouse's owner lock: one process per chDB data directory, named in a file."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bankde.errors import WarehouseLocked

POLL_SECONDS = 0.1


@dataclass(frozen=True)
class LockHolder:
    """Who owns the warehouse, as written by the owner into the lock file."""

    pid: int
    command: str
    since: str
    # --- served warehouse (warehouse/server): where the owner serves it, never a secret -------
    url: str | None = None
    secrets_dir: str | None = None

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def lock_path_for(warehouse_dir: Path) -> Path:
    """$BANKDE_HOME/warehouse -> $BANKDE_HOME/warehouse.lock (next to the directory, not in it)."""
    return warehouse_dir.with_name(warehouse_dir.name + ".lock")


def read_holder(path: Path) -> LockHolder | None:
    """The holder recorded in the lock file, or None if the file is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
        return LockHolder(
            int(data["pid"]),
            str(data.get("command", "?")),
            str(data.get("since", "")),
            data.get("url") or None,
            data.get("secrets_dir") or None,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _command_line() -> str:
    """The program and its subcommand words only (`bankde cdc run`): options and their values
    may carry a DSN or a password, and never belong in a file."""
    words = [Path(sys.argv[0]).name if sys.argv else "python"]
    for arg in sys.argv[1:]:
        if not arg.replace("-", "").replace("_", "").isalnum() or arg.startswith("-"):
            break
        words.append(arg)
    return " ".join(words)[:120]


class WarehouseLock:
    """An exclusive flock on the lock file, held for the life of the owning process.

    flock is released by the kernel when the owner dies, so a lock file left by a dead process
    (kill -9, crash) is taken over on the next acquire; its stale content is overwritten.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._record: dict[str, object] = {}

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: float) -> None:
        """Take the lock, waiting up to `wait` seconds; raise WarehouseLocked naming the holder."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_CLOEXEC (Python's default) keeps child processes such as postgres from inheriting it.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # bankde-security: 0600
        deadline = time.monotonic() + max(wait, 0.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise WarehouseLocked(self._locked_message(wait)) from None
                time.sleep(POLL_SECONDS)
        self._record = {
            "pid": os.getpid(),
            "command": _command_line(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self._fd = fd
        self._write()

    def _write(self) -> None:
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(self._record).encode(), 0)
        os.fsync(self._fd)

    # --- served warehouse (warehouse/server) ------------------------------------------------
    def record_url(self, url: str | None, secrets_dir: Path | None = None) -> None:
        """Publish (or, with None, withdraw) the URL the owner serves the warehouse on, and the
        directory holding its users' password files. The URL never carries a password."""
        if self._fd is None:
            return
        self._record.pop("url", None)
        self._record.pop("secrets_dir", None)
        if url is not None:
            self._record["url"] = url
            if secrets_dir is not None:
                self._record["secrets_dir"] = str(secrets_dir)
        self._write()

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def _locked_message(self, wait: float) -> str:
        where = self.path.with_suffix("")
        holder = read_holder(self.path)
        if holder is None:
            who = "another process"
        elif holder.alive():
            who = f"pid {holder.pid} ({holder.command})"
        else:
            # The recorded owner exited but a process that inherited its descriptor still holds it.
            who = f"a child of exited pid {holder.pid} ({holder.command})"
        return (
            f"warehouse {where} is in use by {who}; waited {wait:g}s — stop that process "
            f"or retry with a longer --wait"
        )
