"""Vectorised PostgreSQL binary COPY encoder: numpy columns in, wire-format row blocks out."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
# timestamptz on the wire: microseconds since 2000-01-01 UTC.
PG_EPOCH_US = 946_684_800_000_000
# numeric(18,2) as 4 base-10000 digits with weight 2: values below 10^12 in magnitude. The
# server strips the leading/trailing zero digits itself, so every row has the same width.
_NUM_DIGITS = 4
_NUMERIC_NEG = 0x4000
MAX_CENTS = 10**14 - 1


@dataclass(frozen=True)
class Int8:
    """bigint column; `null` marks NULL rows."""

    values: np.ndarray
    null: np.ndarray | None = None


@dataclass(frozen=True)
class Timestamp:
    """timestamptz column from int64 microseconds since the Unix epoch."""

    values: np.ndarray


@dataclass(frozen=True)
class Cents:
    """numeric column from int64 cents (never floats)."""

    values: np.ndarray


@dataclass(frozen=True)
class Uuid:
    """uuid column from an (n, 16) uint8 array."""

    values: np.ndarray


@dataclass(frozen=True)
class Label:
    """text/enum/char column from small-integer codes into `labels`; code -1 is NULL."""

    codes: np.ndarray
    labels: Sequence[bytes]


Column = Int8 | Timestamp | Cents | Uuid | Label


def _take(col: Column, idx: np.ndarray) -> Column:
    if isinstance(col, Int8):
        return Int8(col.values[idx], None if col.null is None else col.null[idx])
    if isinstance(col, Label):
        return Label(col.codes[idx], col.labels)
    return type(col)(col.values[idx])


def _shape_key(cols: Sequence[Column], n: int) -> np.ndarray:
    """Rows with equal keys have the same byte layout (same NULLs, same label lengths)."""
    key = np.zeros(n, dtype=np.int64)
    for col in cols:
        if isinstance(col, Label):
            key = key * (len(col.labels) + 1) + (col.codes.astype(np.int64) + 1)
        elif isinstance(col, Int8) and col.null is not None:
            key = key * 2 + col.null.astype(np.int64)
    return key


def _encode_uniform(cols: Sequence[Column], m: int) -> np.ndarray:
    """Encode rows that share one layout into a structured array (one row per element)."""
    names: list[str] = ["nf"]
    formats: list[object] = [">i2"]
    plan: list[tuple[int, Column, int]] = []  # (position, column, byte length or -1)
    for i, col in enumerate(cols):
        names.append(f"l{i}")
        formats.append(">i4")
        if isinstance(col, Int8):
            if col.null is not None and bool(col.null[0]):
                plan.append((i, col, -1))
                continue
            names.append(f"v{i}")
            formats.append(">i8")
            plan.append((i, col, 8))
        elif isinstance(col, Timestamp):
            names.append(f"v{i}")
            formats.append(">i8")
            plan.append((i, col, 8))
        elif isinstance(col, Cents):
            names.append(f"v{i}")
            formats.append((">i2", (4 + _NUM_DIGITS,)))
            plan.append((i, col, 2 * (4 + _NUM_DIGITS)))
        elif isinstance(col, Uuid):
            names.append(f"v{i}")
            formats.append(("u1", (16,)))
            plan.append((i, col, 16))
        else:
            code = int(col.codes[0])
            if code < 0:
                plan.append((i, col, -1))
                continue
            raw = col.labels[code]
            if raw:
                names.append(f"v{i}")
                formats.append(f"S{len(raw)}")
            plan.append((i, col, len(raw)))
    arr = np.empty(m, dtype=np.dtype({"names": names, "formats": formats}))
    arr["nf"] = len(cols)
    for i, col, length in plan:
        arr[f"l{i}"] = length
        if length <= 0:
            continue
        if isinstance(col, Int8):
            arr[f"v{i}"] = col.values
        elif isinstance(col, Timestamp):
            arr[f"v{i}"] = col.values - PG_EPOCH_US
        elif isinstance(col, Cents):
            arr[f"v{i}"] = _numeric_words(col.values)
        elif isinstance(col, Uuid):
            arr[f"v{i}"] = col.values
        else:
            arr[f"v{i}"] = col.labels[int(col.codes[0])]
    return arr


def _numeric_words(cents: np.ndarray) -> np.ndarray:
    c = np.asarray(cents, dtype=np.int64)
    if c.size and int(np.abs(c).max()) > MAX_CENTS:
        raise ValueError("amount too large for the fixed-width numeric encoding")
    mag = np.abs(c)
    words = np.empty((c.shape[0], 4 + _NUM_DIGITS), dtype=np.int16)
    words[:, 0] = _NUM_DIGITS
    words[:, 1] = 2  # weight of the first digit: 10000^2
    words[:, 2] = np.where(c < 0, _NUMERIC_NEG, 0)
    words[:, 3] = 2  # dscale: two decimals
    units = mag // 100
    words[:, 4] = (units // 100_000_000) % 10_000
    words[:, 5] = (units // 10_000) % 10_000
    words[:, 6] = units % 10_000
    words[:, 7] = (mag % 100) * 100
    return words


def encode_blocks(cols: Sequence[Column]) -> list[np.ndarray]:
    """Rows as structured arrays grouped by layout; COPY accepts rows in any order."""
    n = len(cols[0].codes if isinstance(cols[0], Label) else cols[0].values)
    if n == 0:
        return []
    key = _shape_key(cols, n)
    if n and (key == key[0]).all():
        return [_encode_uniform(cols, n)]
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    cuts = np.flatnonzero(sorted_key[1:] != sorted_key[:-1]) + 1
    blocks = []
    for idx in np.split(order, cuts):
        blocks.append(_encode_uniform([_take(c, idx) for c in cols], len(idx)))
    return blocks


def iter_payload(blocks: Sequence[np.ndarray]) -> Iterator[memoryview]:
    """The complete COPY stream: signature, row blocks, trailer."""
    yield memoryview(SIGNATURE)
    for block in blocks:
        yield memoryview(block.view(np.uint8).reshape(-1).data)
    yield memoryview(TRAILER)
