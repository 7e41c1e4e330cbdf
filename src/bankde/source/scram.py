"""SCRAM-SHA-256 password verifiers computed client-side (RFC 5802/7677), so the server never sees a password."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import unicodedata

# Postgres' own default (scram_iterations); the verifier records it, so logins need nothing else.
ITERATIONS = 4096
SALT_BYTES = 16


def _normalise(password: str) -> bytes:
    # Postgres runs SASLprep and falls back to the raw bytes when that fails; bankde's generated
    # passwords are ASCII (identity under SASLprep), and NFKC is SASLprep's mapping step.
    if password.isascii():
        return password.encode()
    return unicodedata.normalize("NFKC", password).encode()


def scram_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS
) -> str:
    """`SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`, the form pg_authid stores.

    Sent as `PASSWORD '<verifier>'`, Postgres stores it as is: the clear text never crosses the
    wire, so neither log_statement nor an error report can leak it.
    """
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    salted = hashlib.pbkdf2_hmac("sha256", _normalise(password), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
