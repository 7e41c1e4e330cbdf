"""The value screen (what a warehouse type cannot hold) and Debezium's text conversions of odd values."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from bankde.cdc.engines.debezium.convert import _array_text, _interval_text, _micro_timestamp_text
from bankde.errors import CaptureError
from bankde.warehouse import screen


def _mask(u: screen.Unfit | None, n: int) -> list[bool]:
    return [False] * n if u is None else u.mask.to_pylist()


def test_decimal_specials_and_overflow_are_unfit() -> None:
    values = pa.array(
        ["1.50", "NaN", "Infinity", "-Infinity", None, "99.99", "100.00", "1.234", "1.230", "nan"]
    )
    got = _mask(screen.unfit_text("x", values, "Nullable(Decimal(4, 2))"), len(values))
    assert got == [False, True, True, True, False, False, True, True, False, True]


def test_decimal_text_that_is_no_number_is_unfit() -> None:
    # From Kafka an event may hold anything: the cast would make these NULL (or 0), silently.
    values = pa.array(["a lot", "", "1e3", "-0.5", "12", "1.2.3", " 1", "-", "7."])
    got = _mask(screen.unfit_text("x", values, "Decimal(18, 2)"), len(values))
    assert got == [True, True, True, False, False, True, True, True, False]


def test_dates_and_timestamps_outside_the_range_are_unfit() -> None:
    values = pa.array(
        [
            "2024-03-05 10:00:00+00",
            "infinity",
            "-infinity",
            "0044-03-15 12:00:00+00 BC",
            "10000-01-01 00:00:00",
            "0001-01-01 00:00:00",
            "9999-12-31 23:59:59.999999",
            None,
        ]
    )
    got = _mask(screen.unfit_text("t", values, "DateTime64(6, 'UTC')"), len(values))
    assert got == [False, True, True, True, True, False, False, False]
    assert screen.unfit_text("t", pa.array(["x"]), "String") is None


def test_typed_snapshot_values_outside_the_range_are_unfit() -> None:
    micros = np.array(["0001-01-01", "2024-01-01", "9999-12-31"], dtype="datetime64[us]")
    raw = [*micros.astype(np.int64).tolist(), np.iinfo(np.int64).max, np.iinfo(np.int64).min + 1]
    values = pa.array(raw, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    u = screen.unfit_typed("t", values, "DateTime64(6, 'UTC')")
    assert _mask(u, 5) == [False, False, False, True, True]
    assert screen.typed_text(values, 3) == "infinity"


def test_debezium_intervals_arrays_and_far_timestamps_as_postgres_prints_them() -> None:
    assert _interval_text("P1Y2M3DT4H5M6.789S") == "1 year 2 mons 3 days 04:05:06.789"
    assert _interval_text("P0Y0M-1DT2H0M0S") == "-1 days +02:00:00"
    assert _interval_text("P0Y0M0DT0H0M0S") == "00:00:00"
    with pytest.raises(CaptureError):
        _interval_text("1 day")
    assert _array_text([1, None, -3]) == "{1,NULL,-3}"
    assert _array_text([["a,b", 'c"d'], ["", "null"]]) == '{{"a,b","c\\"d"},{"","null"}}'
    bc = int(np.datetime64("-0043-03-15T12:00:00", "us").astype(np.int64))
    assert _micro_timestamp_text(bc) == "0044-03-15 12:00:00 BC"
    assert _micro_timestamp_text(9_223_372_036_825_200_000) == "infinity"
