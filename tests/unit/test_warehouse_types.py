"""Type mapping, cast expressions, DDL statement handling and the lock file, without an engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from bankde.errors import WarehouseLocked
from bankde.warehouse.ddl import DbNames, schema_sql, schema_statements
from bankde.warehouse.lock import WarehouseLock, lock_path_for, read_holder
from bankde.warehouse.types import (
    arrow_to_ch_type,
    ch_column_type,
    parse_pg_type,
    pg_type_from_oid,
    same_family,
    strip_wrappers,
    text_cast_expr,
    widens,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("pg", "not_null", "expected"),
    [
        ("bigint", True, "Int64"),
        ("int4", False, "Nullable(Int32)"),
        ("smallint", True, "Int16"),
        ("numeric(18,2)", True, "Decimal(18, 2)"),
        ("numeric(9, 6)", False, "Nullable(Decimal(9, 6))"),
        ("numeric", True, "String"),
        ("text", False, "Nullable(String)"),
        ("character varying(20)", True, "String"),
        ("character(2)", True, "String"),
        ("boolean", True, "Bool"),
        ("date", True, "Date32"),
        ("timestamp with time zone", True, "DateTime64(6, 'UTC')"),
        ("timestamp(3) with time zone", False, "Nullable(DateTime64(6, 'UTC'))"),
        ("timestamp without time zone", True, "DateTime64(6, 'UTC')"),
        ("uuid", True, "UUID"),
        ("jsonb", True, "String"),
        ("double precision", True, "Float64"),
        ("bank.txn_type", True, "LowCardinality(String)"),
        ("bank.txn_status", False, "LowCardinality(Nullable(String))"),
        ("text[]", False, "Nullable(String)"),
        ("tsvector", None, "Nullable(String)"),
    ],
)
def test_pg_type_names_map_to_clickhouse(pg: str, not_null: bool | None, expected: str) -> None:
    assert ch_column_type(parse_pg_type(pg), not_null) == expected


def test_pg_type_oids_map_like_names() -> None:
    numeric_18_2 = ((18 << 16) | 2) + 4
    assert ch_column_type(pg_type_from_oid(1700, numeric_18_2), True) == "Decimal(18, 2)"
    assert ch_column_type(pg_type_from_oid(1700, -1), True) == "String"
    assert ch_column_type(pg_type_from_oid(20), None) == "Nullable(Int64)"
    assert ch_column_type(pg_type_from_oid(1184), True) == "DateTime64(6, 'UTC')"
    assert ch_column_type(pg_type_from_oid(2950), True) == "UUID"
    assert ch_column_type(pg_type_from_oid(16), True) == "Bool"
    # A user-defined type (an enum such as bank.txn_type) gets LowCardinality.
    assert ch_column_type(pg_type_from_oid(16500), True) == "LowCardinality(String)"


def test_wrappers_and_families() -> None:
    assert strip_wrappers("LowCardinality(Nullable(String))") == ("String", True)
    assert strip_wrappers("Decimal(18, 2)") == ("Decimal(18, 2)", False)
    assert same_family("FixedString(2)", "String")
    assert same_family("Decimal(18, 2)", "Decimal(18,2)")
    assert not same_family("Decimal(18, 2)", "Decimal(18, 4)")
    assert not same_family("Int32", "Int64")


def test_text_casts_never_go_through_float() -> None:
    money = text_cast_expr("c0", "Decimal(18, 2)")
    assert "CAST(c0 AS Nullable(Decimal(18, 2)))" in money
    assert "Float" not in money
    assert text_cast_expr("c1", "Nullable(String)") == "c1"
    ts = text_cast_expr("c2", "DateTime64(6, 'UTC')")
    assert "parseDateTime64BestEffort" in ts and "'UTC'" in ts
    # NOT NULL targets take the type default only where the value is absent (delete rows).
    assert text_cast_expr("c3", "Int64").startswith("ifNull(")


def test_arrow_types_for_input_structures() -> None:
    assert arrow_to_ch_type(pa.decimal128(18, 2)) == "Decimal(18, 2)"
    assert arrow_to_ch_type(pa.timestamp("us", "UTC")) == "DateTime64(6, 'UTC')"
    assert arrow_to_ch_type(pa.int64()) == "Int64"
    assert arrow_to_ch_type(pa.uint32()) == "UInt32"
    assert arrow_to_ch_type(pa.string()) == "String"
    assert arrow_to_ch_type(pa.date32()) == "Date32"


def test_packaged_schema_is_the_clickhouse_init_file() -> None:
    assert schema_sql() == (REPO / "clickhouse_init" / "01_schema_dwh.sql").read_text(
        encoding="utf-8"
    )


def test_schema_statements_take_the_prefix_only_where_objects_are_created() -> None:
    plain = schema_statements("")
    prefixed = schema_statements("t1_")
    assert len(plain) == len(prefixed) >= 10
    assert "CREATE DATABASE IF NOT EXISTS t1_raw" in prefixed
    assert any(s.startswith("CREATE TABLE IF NOT EXISTS t1_raw.transaction") for s in prefixed)
    assert any(s.startswith("CREATE TABLE IF NOT EXISTS t1_meta.cdc_offsets") for s in prefixed)
    # A ';' inside a COMMENT string does not split a statement; comments keep source names.
    fraud = next(s for s in prefixed if "t1_truth.fraud_episode" in s)
    assert "COMMENT 'CDC landing of truth.fraud_episode (ground truth; evaluation only)'" in fraud
    names = DbNames("t1_")
    assert (names.raw, names.truth, names.meta) == ("t1_raw", "t1_truth", "t1_meta")
    assert names.landing_table("bank", "card") == "`t1_raw`.`card`"
    assert names.landing_table("truth", "fraud_label") == "`t1_truth`.`fraud_label`"


def test_lock_is_exclusive_and_names_its_holder(tmp_path: Path) -> None:
    path = lock_path_for(tmp_path / "warehouse")
    assert path == tmp_path / "warehouse.lock"
    first = WarehouseLock(path)
    first.acquire(0)
    holder = read_holder(path)
    assert holder is not None and holder.pid == os.getpid()
    # flock belongs to the open file: a second descriptor conflicts even inside one process.
    second = WarehouseLock(path)
    with pytest.raises(WarehouseLocked) as err:
        second.acquire(0.2)
    msg = str(err.value)
    assert f"pid {os.getpid()}" in msg and "--wait" in msg and "\n" not in msg
    first.release()
    second.acquire(0)
    second.release()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.lock"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    path.write_text(
        json.dumps({"pid": int(dead.stdout), "command": "bankde cdc run", "since": "x"})
    )
    lock = WarehouseLock(path)
    lock.acquire(0)
    holder = read_holder(path)
    assert holder is not None and holder.pid == os.getpid()
    lock.release()


@pytest.mark.parametrize(
    ("old", "new", "ok"),
    [
        ("Int16", "Int32", True),
        ("Int32", "Int64", True),
        ("Int16", "Int64", True),
        ("Int64", "Int32", False),
        ("Decimal(18, 2)", "Decimal(20, 4)", True),
        ("Decimal(18, 2)", "Decimal(18, 4)", False),  # two integer digits fewer
        ("Decimal(18, 2)", "Decimal(19, 2)", True),
        ("Decimal(18, 2)", "Decimal(17, 2)", False),
        ("Decimal(18, 2)", "Decimal(18, 1)", False),
        ("String", "Int32", False),
        ("Int32", "String", False),
        ("Int32", "Decimal(20, 0)", False),
        ("Float32", "Float64", False),
    ],
)
def test_widens_only_where_every_old_value_fits_exactly(old: str, new: str, ok: bool) -> None:
    assert widens(old, new) is ok
