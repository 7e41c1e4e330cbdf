"""Finding the served warehouse: the owner's lock file names its URL, secrets/ holds the password."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from bankde.errors import ConfigError
from bankde.settings import Settings
from bankde.warehouse.lock import lock_path_for, read_holder


@dataclass(frozen=True)
class ServedWarehouse:
    """The warehouse as another process serves it. `client_url` carries the writer's password
    (for clickhouse-connect / dbt in memory); `url` never does (safe to print)."""

    path: str
    pid: int
    url: str
    user: str
    password: str

    @property
    def client_url(self) -> str:
        scheme, rest = self.url.split("://", 1)
        return f"{scheme}://{quote(self.user, safe='')}:{quote(self.password, safe='')}@{rest}"


def find_served(settings: Settings) -> ServedWarehouse | None:
    """The serving owner of this settings' embedded warehouse, or None when no process serves it
    (then the caller opens it in-process, waiting for the lock as before). Never this process."""
    from bankde.warehouse.client import warehouse_path
    from bankde.warehouse.server.users import WRITER, password_file, read_password

    path = warehouse_path(settings)
    holder = read_holder(lock_path_for(Path(path)))
    if holder is None or holder.url is None or holder.pid == os.getpid() or not holder.alive():
        return None
    secrets = Path(holder.secrets_dir) if holder.secrets_dir else settings.home_dir / "secrets"
    password = read_password(secrets, WRITER)
    if password is None:
        raise ConfigError(
            f"warehouse {path} is served by pid {holder.pid} at {holder.url}, but its password "
            f"file {password_file(secrets, WRITER)} is not readable by this user"
        )
    return ServedWarehouse(path, holder.pid, holder.url, WRITER, password)


def resolve(settings: Settings) -> Settings:
    """These settings, pointed at the served warehouse when another process serves it: what
    everything that builds its own connection from the settings (dbt) must use."""
    if not settings.embedded_warehouse:
        return settings
    served = find_served(settings)
    if served is None:
        return settings
    return settings.model_copy(update={"clickhouse_url": served.client_url})
