"""A served warehouse for tests: `bankde wh serve` in a process of its own, on a free port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BANKDE = str(REPO / ".venv" / "bin" / "bankde")


@dataclass
class Served:
    home: Path
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def password(self, user: str = "bankde") -> str:
        name = "warehouse-writer" if user == "bankde" else "warehouse-reader"
        return (self.home / "secrets" / name).read_text().strip()

    def client_url(self, user: str = "bankde") -> str:
        return f"http://{user}:{self.password(user)}@127.0.0.1:{self.port}"

    @property
    def tmp(self) -> Path:
        """The server's own $TMPDIR (its INSERT spool lives there, apart from other servers')."""
        return self.home / "tmp"

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def serve_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BANKDE_", "DB_"))}
    env["BANKDE_HOME"] = str(home)
    return env


def start_served(home: Path, port: int, timeout: float = 90) -> Served:
    """Start `bankde wh serve --port port` on `home` and wait until the lock file names its URL."""
    log = home / "serve.log"
    # A $TMPDIR of its own: a test that looks for the server's spool files must not see those of
    # a server another test worker runs at the same time.
    (home / "tmp").mkdir(exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [BANKDE, "wh", "serve", "--port", str(port)],
            env={**serve_env(home), "TMPDIR": str(home / "tmp")},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    served = Served(home, port, proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"wh serve exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            record = json.loads((home / "warehouse.lock").read_text() or "{}")
        except (OSError, ValueError):
            record = {}
        if record.get("url") == served.url:
            return served
        time.sleep(0.2)
    served.stop()
    raise RuntimeError(f"wh serve did not publish its URL in {timeout}s: {log.read_text()[-2000:]}")
