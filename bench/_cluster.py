"""Shared benchmark helpers: a throwaway managed Postgres cluster, free ports, peak memory."""

from __future__ import annotations

import resource
import shutil
import socket
import tempfile
from pathlib import Path

from bankde.settings import Settings
from bankde.source.cluster import ManagedCluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def start_cluster(prefix: str) -> tuple[Path, Settings, ManagedCluster]:
    """A started managed cluster in a new home under /tmp (0755: the server user must enter it)."""
    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    home.chmod(0o755)
    settings = Settings(home=home, pg_port=free_port(), pg_dsn=None, db_host=None)
    cluster = ManagedCluster(settings)
    cluster.init()
    cluster.start()
    return home, settings, cluster


def stop_cluster(home: Path, cluster: ManagedCluster) -> None:
    cluster.stop()
    shutil.rmtree(home, ignore_errors=True)
