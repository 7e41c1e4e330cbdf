"""The served warehouse's two users: a writer and a read-only reader, passwords under secrets/."""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bankde.warehouse.server.protocol import (
    AUTHENTICATION_FAILED,
    ClickHouseError,
)

WRITER = "bankde"
READER = "bankde_reader"
_PASSWORD_FILES = {WRITER: "warehouse-writer", READER: "warehouse-reader"}


@dataclass(frozen=True)
class User:
    """A user of the front. `readonly` is ClickHouse's setting: 2 reads and sets settings, never
    writes (a write fails with code 164 READONLY, as on a server with a readonly profile)."""

    name: str
    readonly: int


def password_file(secrets_dir: Path, user: str) -> Path:
    return secrets_dir / _PASSWORD_FILES[user]


def ensure_passwords(secrets_dir: Path) -> dict[str, str]:
    """The users' passwords, generated on first use into 0600 files of a 0700 directory."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(secrets_dir, 0o700)
    out: dict[str, str] = {}
    for user in (WRITER, READER):
        path = password_file(secrets_dir, user)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24))
        out[user] = path.read_text(encoding="utf-8").strip()
    return out


def read_password(secrets_dir: Path, user: str) -> str | None:
    try:
        return password_file(secrets_dir, user).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


class Authenticator:
    """Checks a request's credentials the ways ClickHouse accepts them: X-ClickHouse-User/Key
    headers, HTTP basic auth, or `user`/`password` URL parameters (no user means `default`)."""

    def __init__(self, passwords: Mapping[str, str]) -> None:
        self._passwords = dict(passwords)
        self._users = {WRITER: User(WRITER, 0), READER: User(READER, 2)}

    def authenticate(self, headers: Mapping[str, str], params: Mapping[str, str]) -> User:
        name, password = _credentials(headers, params)
        expected = self._passwords.get(name)
        # compare_digest on both branches: the answer takes as long for an unknown user.
        ok = hmac.compare_digest(password.encode(), (expected or "\0").encode())
        if expected is None or not ok:
            raise ClickHouseError(
                AUTHENTICATION_FAILED,
                f"{name}: Authentication failed: password is incorrect, or there is no user with "
                "such name",
                "AUTHENTICATION_FAILED",
            )
        return self._users[name]


def _credentials(headers: Mapping[str, str], params: Mapping[str, str]) -> tuple[str, str]:
    user = headers.get("x-clickhouse-user")
    if user is not None:
        return user, headers.get("x-clickhouse-key", "")
    auth = headers.get("authorization", "")
    if auth[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ClickHouseError(
                AUTHENTICATION_FAILED, "Malformed Authorization header", "AUTHENTICATION_FAILED"
            ) from None
        name, _, password = decoded.partition(":")
        return name or "default", password
    return params.get("user", "default"), params.get("password", "")
