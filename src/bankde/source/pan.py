"""Card numbers at rest: AES-256-CBC ciphertext pgcrypto can decrypt, a keyed hash for lookups, the last four digits."""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bankde.errors import ConfigError
from bankde.settings import Settings

KEY_FILE = "pan_key"
KEY_BYTES = 32
IV_BYTES = 16

# pgcrypto reads the stored form back with the encryption subkey (docs/security.md):
#   decrypt_iv(substring(pan_enc from 17), :enc_key, substring(pan_enc for 16), 'aes-cbc/pad:pkcs')
PGCRYPTO_DECRYPT = (
    "convert_from(decrypt_iv(substring(pan_enc from 17), %s, substring(pan_enc for 16), "
    "'aes-cbc/pad:pkcs'), 'UTF8')"
)


@dataclass(frozen=True)
class PanKey:
    """Two subkeys of one master key: one encrypts, one hashes (a hash never reveals the other)."""

    enc_key: bytes
    mac_key: bytes

    @classmethod
    def from_master(cls, master: bytes) -> PanKey:
        def sub(label: bytes) -> bytes:
            return hmac.new(master, label, hashlib.sha256).digest()

        return cls(sub(b"bankde pan encryption v1"), sub(b"bankde pan lookup v1"))

    def encrypt(self, pan: str) -> bytes:
        """IV || AES-256-CBC(PKCS#7(pan)). The IV is a keyed hash of the number (a synthetic
        IV): unpredictable without the key, as CBC needs, and the same for the same card, so the
        same seed and key give byte-identical rows. It reveals only that two ciphertexts hold
        the same number, which pan_hash states anyway."""
        iv = hmac.new(self.mac_key, b"iv" + pan.encode(), hashlib.sha256).digest()[:IV_BYTES]
        padder = padding.PKCS7(128).padder()
        data = padder.update(pan.encode()) + padder.finalize()
        enc = Cipher(algorithms.AES(self.enc_key), modes.CBC(iv)).encryptor()
        return iv + enc.update(data) + enc.finalize()

    def decrypt(self, blob: bytes) -> str:
        dec = Cipher(algorithms.AES(self.enc_key), modes.CBC(blob[:IV_BYTES])).decryptor()
        data = dec.update(blob[IV_BYTES:]) + dec.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        return (unpadder.update(data) + unpadder.finalize()).decode()

    def lookup_hash(self, pan: str) -> str:
        """HMAC-SHA256 of the card number, hex: equal cards match, and without the key a
        dictionary over the ~10^9 numbers of one BIN cannot reverse it (a plain hash could)."""
        return hmac.new(self.mac_key, pan.encode(), hashlib.sha256).hexdigest()


def key_path(settings: Settings) -> tuple[Path, str]:
    """The key file and the setting that names it (for error messages)."""
    if settings.pan_key_file is not None:
        return settings.pan_key_file.expanduser(), "BANKDE_PAN_KEY_FILE"
    return settings.home_dir / "secrets" / KEY_FILE, "BANKDE_HOME/secrets/pan_key"


def load_key(settings: Settings, create: bool = True) -> PanKey:
    """The card-number key: BANKDE_PAN_KEY_FILE if set (it must exist), else
    $BANKDE_HOME/secrets/pan_key, made (0600, 32 random bytes as 64 hex digits) on first use."""
    path, setting = key_path(settings)
    if not path.is_file():
        if settings.pan_key_file is not None or not create:
            raise ConfigError(f"{setting}={path}: key file does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it meanwhile: read theirs
        else:
            with os.fdopen(fd, "w") as f:
                f.write(os.urandom(KEY_BYTES).hex() + "\n")
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{setting}={path}: cannot read the key file ({exc.strerror})") from None
    try:
        master = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{setting}={path}: the key must be {KEY_BYTES * 2} hex digits") from None
    if len(master) != KEY_BYTES:
        raise ConfigError(
            f"{setting}={path}: the key is {len(master)} bytes, it must be {KEY_BYTES} "
            f"({KEY_BYTES * 2} hex digits)"
        )
    return PanKey.from_master(master)


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0
