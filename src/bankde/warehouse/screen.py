"""Which source values a warehouse column type cannot hold exactly, found in bulk over Arrow."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bankde.warehouse.types import is_textual, strip_wrappers

# DateTime64 and Date32 hold 0001-01-01 .. 9999-12-31 (ClickHouse 25+); Postgres goes from
# 4713 BC to 294276 AD and has ±infinity. In microseconds / days since 1970-01-01.
_MIN_US = -62_135_596_800_000_000
_MAX_US = 253_402_300_799_999_999
_MIN_DAYS = -719_162
_MAX_DAYS = 2_932_896
_DECIMAL_RE = re.compile(r"^Decimal\((\d+),\s*(\d+)\)$")


@dataclass(frozen=True)
class Unfit:
    """Rows of one column whose value the warehouse type cannot hold, and why."""

    column: str
    mask: pa.Array  # bool, True where the value does not fit
    reason: str


def checked(ch_type: str) -> bool:
    """Whether values of this warehouse type need screening at all (most types do not: text,
    integers, floats, bool, uuid hold every value Postgres can send them exactly)."""
    base, _ = strip_wrappers(ch_type)
    return base.startswith(("Decimal(", "DateTime64", "Date32"))


def unfit_text(column: str, values: pa.Array, ch_type: str) -> Unfit | None:
    """Postgres text values the type cannot hold: numeric NaN/±Infinity or more digits than a
    Decimal keeps; an infinite, BC or five-digit-year date or timestamp. None when all fit."""
    base, _ = strip_wrappers(ch_type)
    if len(values) == 0:
        return None
    m = _DECIMAL_RE.match(base.replace(" ", ""))
    if m:
        precision, scale = int(m.group(1)), int(m.group(2))
        # Anything but digits with an optional sign and point: NaN, Infinity, -Infinity (what
        # Postgres prints besides numbers), and text that is no number at all (an event from
        # Kafka may hold anything), which the cast would otherwise turn into NULL or 0.
        number = pc.match_substring_regex(values, r"^-?[0-9]+(\.[0-9]*)?$")
        mask = pc.fill_null(pc.invert(number), False)
        # Digits before and after the point, in bulk; the few candidates are checked exactly
        # (trailing fraction zeros beyond the scale lose nothing).
        length = pc.utf8_length(values)
        point = pc.find_substring(values, ".")
        whole = pc.subtract(
            pc.if_else(pc.less(point, 0), length, point),
            pc.starts_with(values, "-").cast(pa.int32()),
        )
        frac = pc.if_else(pc.less(point, 0), 0, pc.subtract(pc.subtract(length, point), 1))
        long = pc.fill_null(
            pc.or_(pc.greater(whole, precision - scale), pc.greater(frac, scale)), False
        )
        long = pc.and_(long, pc.invert(mask))
        if pc.any(long).as_py():
            mask = pc.or_(mask, _decimal_overflow(values, long, precision, scale))
        reason = f"not representable in Decimal({precision}, {scale})"
    elif base.startswith(("DateTime64", "Date32")):
        # Four-digit year then '-': rules out infinity, -infinity and years past 9999; a BC
        # date or timestamp ends in ' BC'.
        dash = pc.equal(pc.utf8_slice_codeunits(values, 4, 5), "-")
        bad = pc.or_(pc.invert(dash), pc.ends_with(values, " BC"))
        mask = pc.fill_null(bad, False)
        reason = f"outside {base}'s range 0001-01-01 .. 9999-12-31 (or infinite)"
    else:
        return None
    if not pc.any(mask).as_py():
        return None
    return Unfit(column, mask, reason)


def unfit_typed(column: str, values: pa.Array, ch_type: str) -> Unfit | None:
    """The same screen for Arrow-typed snapshot columns (timestamp, date32; text goes to
    unfit_text). Infinity arrives from binary COPY as the int64 extremes, far out of range."""
    if is_textual(values.type):
        return unfit_text(column, values, ch_type)
    if not checked(ch_type) or len(values) == 0:
        return None
    if pa.types.is_timestamp(values.type):
        raw = values.cast(pa.int64()) if values.type.unit == "us" else None
        if raw is None:
            return None
        lo, hi = _MIN_US, _MAX_US
    elif pa.types.is_date32(values.type):
        raw = values.cast(pa.int32())
        lo, hi = _MIN_DAYS, _MAX_DAYS
    else:
        return None
    bad = pc.fill_null(pc.or_(pc.less(raw, lo), pc.greater(raw, hi)), False)
    if not pc.any(bad).as_py():
        return None
    base, _ = strip_wrappers(ch_type)
    return Unfit(column, bad, f"outside {base}'s range 0001-01-01 .. 9999-12-31 (or infinite)")


def typed_text(values: pa.Array, index: int) -> str | None:
    """The source text of one Arrow-typed value for meta.cdc_rejects (as Postgres prints it
    where that is unambiguous: infinity, BC dates)."""
    v = values[index]
    if not v.is_valid:
        return None
    if pa.types.is_timestamp(values.type) or pa.types.is_date32(values.type):
        wide = pa.types.is_timestamp(values.type)
        info = np.iinfo(np.int64 if wide else np.int32)
        raw = int(v.cast(pa.int64() if wide else pa.int32()).as_py())
        if raw >= info.max:
            return "infinity"
        if raw <= info.min:
            return "-infinity"
        return str(np.datetime64(raw, "us" if wide else "D"))
    return str(v.as_py())


def _decimal_overflow(
    values: pa.Array, candidates: pa.Array, precision: int, scale: int
) -> pa.Array:
    """Exact check of the few long values: more integer or fraction digits than Decimal(P, S)."""
    out = np.zeros(len(values), dtype=bool)
    for i in np.flatnonzero(candidates.to_numpy(zero_copy_only=False)):
        text = values[int(i)].as_py()
        if text is None:
            continue
        try:
            d = Decimal(text)
        except InvalidOperation:
            out[i] = True
            continue
        if not d.is_finite():
            out[i] = True
            continue
        _sign, digits, exp = d.as_tuple()
        assert isinstance(exp, int)
        frac = max(0, -exp)
        whole = max(0, len(digits) + exp)
        # Trailing fraction zeros beyond the scale lose nothing; other digits would be cut.
        frac_kept = frac
        if frac > scale:
            tail = digits[len(digits) - (frac - scale) :]
            if any(tail):
                out[i] = True
                continue
            frac_kept = scale
        if whole > precision - scale or whole + frac_kept > precision:
            out[i] = True
    return pa.array(out)
