"""The served warehouse with real, unchanged clients: clickhouse-connect, curl, ClickHouse's JDBC
driver, dbt; users, errors, all-or-nothing inserts, discovery, port taken, clean stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tests.conftest import REPO, free_port, make_home
from tests.served import BANKDE, Served, serve_env, start_served

DBT = str(REPO / ".venv" / "bin" / "dbt")
JVM_PROJECT = REPO / "tests" / "jvm"


def connect(served: Served, user: str = "bankde", **kwargs: Any) -> Any:
    import clickhouse_connect

    return clickhouse_connect.get_client(
        host="127.0.0.1", port=served.port, username=user, password=served.password(user), **kwargs
    )


@pytest.fixture()
def db(served_warehouse: Served) -> Iterator[str]:
    """A database of this test's own in the session's served warehouse; dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:10]
    client = connect(served_warehouse)
    client.command(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        client.command(f"DROP DATABASE IF EXISTS {name}")
        client.close()


def curl(served: Served, *args: str, password: str | None = None) -> subprocess.CompletedProcess:
    """curl with the password in a config read from stdin (never on the command line)."""
    config = f'user = "bankde:{password if password is not None else served.password()}"\n'
    return subprocess.run(
        ["curl", "-sS", "-i", "-K", "-", *args],
        input=config,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _status_headers_body(out: str) -> tuple[int, dict[str, str], str]:
    head, _, body = out.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


# --- clickhouse-connect ----------------------------------------------------------------------
@pytest.mark.parametrize("compress", [True, False, "lz4", "zstd", "gzip"])
def test_clickhouse_connect_queries_inserts_commands(
    served_warehouse: Served, db: str, compress: Any
) -> None:
    client = connect(served_warehouse, compress=compress, database=db)
    assert client.server_version.startswith("26.")
    client.command(
        "CREATE TABLE acct (id UInt64, name String, amount Decimal(18, 2), at DateTime64(6, 'UTC'))"
        " ENGINE = MergeTree ORDER BY id"
    )
    rows = [[i, f"n{i}", Decimal(f"{i}.25"), None] for i in range(1, 1001)]
    for r in rows:
        r[3] = __import__("datetime").datetime(2024, 1, 1, 0, 0, r[0] % 60)
    summary = client.insert("acct", rows, column_names=["id", "name", "amount", "at"])
    assert summary.written_rows == 1000
    arrow = pa.table(
        {
            "id": pa.array(range(1001, 1101), pa.uint64()),
            "name": [f"a{i}" for i in range(100)],
            "amount": pa.array([Decimal("0.10")] * 100, pa.decimal128(18, 2)),
            "at": pa.array([0] * 100, pa.timestamp("us", "UTC")),
        }
    )
    client.insert_arrow("acct", arrow)
    assert client.command("SELECT count() FROM acct") == 1100
    result = client.query("SELECT id, name, amount FROM acct WHERE id IN (1, 1001) ORDER BY id")
    assert result.result_rows == [(1, "n1", Decimal("1.25")), (1001, "a0", Decimal("0.10"))]
    table = client.query_arrow("SELECT sum(amount) AS s, count() AS c FROM acct")
    assert table.column("c").to_pylist() == [1100]
    assert str(table.column("s").to_pylist()[0]) == str(
        sum(Decimal(f"{i}.25") for i in range(1, 1001)) + Decimal("10.00")
    )
    # Server-side parameters and per-query settings.
    assert client.query("SELECT {n:UInt64} * 2", parameters={"n": 21}).result_rows == [(42,)]
    setting = client.query(
        "SELECT value FROM system.settings WHERE name = 'max_threads'",
        settings={"max_threads": 1},
    )
    assert setting.result_rows == [("1",)]
    # A query's setting does not leak into the next one.
    after = client.query("SELECT changed FROM system.settings WHERE name = 'max_threads'")
    assert after.result_rows == [(0,)]
    # 1M rows streamed back (Native), compressed as asked.
    big = client.query("SELECT number FROM numbers(1000000)")
    assert big.row_count == 1_000_000
    client.close()


def test_sessions_keep_settings_and_temporary_tables(served_warehouse: Served) -> None:
    client = connect(served_warehouse, autogenerate_session_id=True)
    client.command("SET max_threads = 1")
    client.command("CREATE TEMPORARY TABLE scratch (x Int32)")
    client.command("INSERT INTO scratch VALUES (7)")
    assert client.query("SELECT x FROM scratch").result_rows == [(7,)]
    assert client.query(
        "SELECT value FROM system.settings WHERE name = 'max_threads'"
    ).result_rows == [("1",)]
    other = connect(served_warehouse, autogenerate_session_id=True)
    with pytest.raises(Exception, match="code: 60"):
        other.query("SELECT x FROM scratch")  # another session does not see it
    client.close()
    other.close()


def test_readonly_user_reads_and_is_refused_writes(served_warehouse: Served, db: str) -> None:
    from clickhouse_connect.driver.exceptions import DatabaseError

    writer = connect(served_warehouse, database=db)
    writer.command("CREATE TABLE t (x Int32) ENGINE = MergeTree ORDER BY x")
    writer.command("INSERT INTO t VALUES (1), (2)")
    reader = connect(served_warehouse, user="bankde_reader", database=db)
    assert reader.command("SELECT sum(x) FROM t") == 3
    for statement in ("INSERT INTO t VALUES (3)", "DROP TABLE t", "SET readonly = 0"):
        with pytest.raises(DatabaseError, match="code: 164"):
            reader.command(statement)
    with pytest.raises(DatabaseError, match="code: 164"):
        reader.insert("t", [[3]], column_names=["x"])
    assert writer.command("SELECT count() FROM t") == 2


def test_wrong_password_is_authentication_failed(served_warehouse: Served) -> None:
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import DatabaseError

    with pytest.raises(DatabaseError, match="code: 516"):
        clickhouse_connect.get_client(
            host="127.0.0.1", port=served_warehouse.port, username="bankde", password="wrong"
        )
    status, headers, body = _status_headers_body(
        curl(served_warehouse, f"{served_warehouse.url}/?query=SELECT+1", password="wrong").stdout
    )
    assert status == 401 and headers["x-clickhouse-exception-code"] == "516"
    assert body.startswith("Code: 516. DB::Exception: bankde: Authentication failed")
    # bankde itself: one line, exit 1.
    env = {**serve_env(served_warehouse.home), "BANKDE_CLICKHOUSE_URL": f"http://bankde:wrong@127.0.0.1:{served_warehouse.port}"}  # fmt: skip
    proc = subprocess.run(
        [BANKDE, "wh", "sql", "SELECT 1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1 and "516" in proc.stderr, proc.stderr


# --- curl --------------------------------------------------------------------------------------
def test_curl_with_the_password(served_warehouse: Served, db: str) -> None:
    base = served_warehouse.url
    ok = curl(served_warehouse, f"{base}/?query=SELECT+1")
    status, headers, body = _status_headers_body(ok.stdout)
    assert (status, body) == (200, "1\n"), ok.stdout
    assert headers["x-clickhouse-format"] == "TabSeparated"
    assert "x-clickhouse-query-id" in headers and "x-clickhouse-summary" in headers
    assert _status_headers_body(curl(served_warehouse, f"{base}/ping").stdout)[2] == "Ok.\n"
    # The statement in the body, data after it (curl --data-binary), then read back as JSON.
    curl(served_warehouse, f"{base}/?database={db}", "--data-binary", "CREATE TABLE c (a Int32, b String) ENGINE = MergeTree ORDER BY a")  # fmt: skip
    ins = curl(served_warehouse, f"{base}/?database={db}", "--data-binary", "INSERT INTO c FORMAT CSV\n1,x\n2,y\n")  # fmt: skip
    assert _status_headers_body(ins.stdout)[0] == 200, ins.stdout
    out = curl(served_warehouse, f"{base}/?database={db}&default_format=JSONEachRow", "--data-binary", "SELECT * FROM c ORDER BY a")  # fmt: skip
    assert _status_headers_body(out.stdout)[2] == '{"a":1,"b":"x"}\n{"a":2,"b":"y"}\n'
    # GET is read-only, as on a server.
    get = curl(served_warehouse, f"{base}/?database={db}&query=DROP+TABLE+c")
    status, headers, _ = _status_headers_body(get.stdout)
    assert (status, headers["x-clickhouse-exception-code"]) == (403, "164")
    # Compressed response on request.
    gz = curl(served_warehouse, f"{base}/?enable_http_compression=1&query=SELECT+number+FROM+numbers(100000)", "--compressed")  # fmt: skip
    status, headers, body = _status_headers_body(gz.stdout)
    assert headers["content-encoding"] in ("gzip", "deflate", "zstd", "br"), headers
    assert body.splitlines()[-1] == "99999"


def test_unsupported_features_and_formats_are_named(served_warehouse: Served) -> None:
    base = served_warehouse.url
    external = curl(served_warehouse, f"{base}/?query=SELECT+1", "-F", "t=@/dev/null")
    status, headers, body = _status_headers_body(external.stdout)
    assert (status, headers["x-clickhouse-exception-code"]) == (501, "48")
    assert "multipart/form-data" in body
    fmt = curl(served_warehouse, f"{base}/", "--data-binary", "SELECT 1 FORMAT NoSuchFormat")
    status, headers, body = _status_headers_body(fmt.stdout)
    assert headers["x-clickhouse-exception-code"] == "73" and "NoSuchFormat" in body
    enc = curl(served_warehouse, f"{base}/", "-H", "Content-Encoding: snappy", "--data-binary", "SELECT 1")  # fmt: skip
    status, headers, body = _status_headers_body(enc.stdout)
    assert headers["x-clickhouse-exception-code"] == "48" and "snappy" in body


def test_insert_is_all_or_nothing(served_warehouse: Served, db: str) -> None:
    client = connect(served_warehouse, database=db)
    client.command("CREATE TABLE n (a Int32) ENGINE = MergeTree ORDER BY a")
    # A bad row at the end of the data: nothing of the insert lands.
    bad = "\n".join(str(i) for i in range(10_000)) + "\nnot-a-number\n"
    proc = curl(served_warehouse, f"{served_warehouse.url}/?database={db}&query=INSERT+INTO+n+FORMAT+CSV", "--data-binary", bad)  # fmt: skip
    assert _status_headers_body(proc.stdout)[0] >= 400, proc.stdout
    assert client.command("SELECT count() FROM n") == 0
    # The client goes away in the middle of the body: the insert never runs.
    assert list(served_warehouse.tmp.glob("bankde-wh-spool-*")), (
        "the server spools under its TMPDIR"
    )
    spool_before = _spool_files(served_warehouse)
    with socket.create_connection(("127.0.0.1", served_warehouse.port)) as s:
        import base64

        auth = base64.b64encode(f"bankde:{served_warehouse.password()}".encode()).decode()
        s.sendall(
            (
                f"POST /?database={db}&query=INSERT+INTO+n+FORMAT+CSV HTTP/1.1\r\n"
                f"Host: x\r\nAuthorization: Basic {auth}\r\nContent-Length: 1000000\r\n\r\n"
            ).encode()
            + b"1\n2\n3\n" * 1000
        )
        time.sleep(0.5)
    time.sleep(1.0)
    assert client.command("SELECT count() FROM n") == 0
    assert _spool_files(served_warehouse) <= spool_before, "the spooled body is removed"


def _spool_files(served: Served) -> set[str]:
    return {str(p) for p in served.tmp.glob("bankde-wh-spool-*/insert-*")}


# --- JVM: ClickHouse's JDBC driver (DBeaver, Metabase) -------------------------------------------
@pytest.fixture(scope="module")
def jdbc_classpath() -> str:
    """Build the tiny JDBC client: dependencies from Maven Central, javac, classpath."""
    if not shutil.which("mvn") or not shutil.which("javac"):
        pytest.fail("maven and a JDK are required (.ci/run installs them)")
    target = JVM_PROJECT / "target"
    subprocess.run(
        ["mvn", "-q", "-B", "dependency:build-classpath", f"-Dmdep.outputFile={target / 'classpath.txt'}"],
        cwd=JVM_PROJECT, check=True, timeout=900,
    )  # fmt: skip
    classes = target / "classes"
    classes.mkdir(parents=True, exist_ok=True)
    deps = (target / "classpath.txt").read_text().strip()
    sources = [str(p) for p in (JVM_PROJECT / "src" / "main" / "java").rglob("*.java")]
    subprocess.run(["javac", "-d", str(classes), "-cp", deps, *sources], check=True, timeout=300)
    return f"{classes}{os.pathsep}{deps}"


def test_jdbc_driver_runs_a_query(served_warehouse: Served, jdbc_classpath: str) -> None:
    def java(sql: str, password: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "BANKDE_CH_PASSWORD": password}
        return subprocess.run(
            ["java", "-cp", jdbc_classpath, "bankde.JdbcQuery",
             f"jdbc:clickhouse://127.0.0.1:{served_warehouse.port}/default", "bankde", sql],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    ok = java("SELECT count() AS n, sum(number) AS s FROM numbers(10)", served_warehouse.password())
    assert ok.returncode == 0, ok.stdout + ok.stderr[-3000:]
    assert ok.stdout.strip().splitlines()[-1] == "10\t45"
    bad = java("SELECT 1", "wrong")
    assert bad.returncode == 3 and "516" in bad.stdout, bad.stdout + bad.stderr[-2000:]


# --- the server process --------------------------------------------------------------------------
def test_commands_find_the_served_warehouse_with_no_flag() -> None:
    """`wh sql`, `wh init` and plain `cd dbt && dbt …` reach the warehouse another process serves;
    dbt resolves ./.bankde from the repo root, not from dbt/."""
    repo = make_home("bankde-repo-")
    home = repo / ".bankde"
    home.mkdir()
    shutil.copytree(REPO / "dbt", repo / "dbt", ignore=shutil.ignore_patterns("target", "logs"))
    served = start_served(home, free_port())
    try:
        client = connect(served)
        client.command("CREATE TABLE default.marker (v String) ENGINE = MergeTree ORDER BY v")
        client.command("INSERT INTO default.marker VALUES ('from-the-served-one')")
        env = serve_env(home)
        sql = subprocess.run(
            [BANKDE, "wh", "sql", "SELECT v FROM default.marker", "--format", "csv", "--wait", "0"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert sql.returncode == 0, sql.stderr
        assert sql.stdout.splitlines() == ["v", "from-the-served-one"]
        init = subprocess.run([BANKDE, "wh", "init", "--wait", "0"], env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert init.returncode == 0 and "served by pid" in init.stdout, init.stdout + init.stderr
        # Plain dbt from dbt/ with no BANKDE_* at all: the chdb target finds the served warehouse.
        plain = {k: v for k, v in env.items() if k != "BANKDE_HOME"}
        plain.update(DBT_LOG_PATH=str(repo / "logs"), DBT_TARGET_PATH=str(repo / "target"))
        show = subprocess.run(
            [DBT, "show", "--inline", "select v from default.marker", "--profiles-dir", "."],
            cwd=repo / "dbt", env=plain, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert show.returncode == 0, show.stdout[-3000:]
        assert "from-the-served-one" in show.stdout
        client.close()
    finally:
        assert served.stop() == 0
        shutil.rmtree(repo, ignore_errors=True)


def test_port_taken_exits_2_naming_it(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        home = make_home("bankde-port-")
        try:
            proc = subprocess.run(
                [BANKDE, "wh", "serve", "--port", str(port)],
                env=serve_env(home), capture_output=True, text=True, timeout=120,
            )  # fmt: skip
        finally:
            shutil.rmtree(home, ignore_errors=True)
    assert proc.returncode == 2, proc.stderr
    assert f"port {port}" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_sigterm_finishes_in_flight_requests_and_releases_the_lock() -> None:
    home = make_home("bankde-stop-")
    served = start_served(home, free_port())
    try:
        client = connect(served)
        result: dict[str, Any] = {}

        def slow() -> None:
            try:
                result["rows"] = client.query(
                    "SELECT sum(sleepEachRow(0.3) + number) FROM numbers(8) SETTINGS max_block_size = 1"
                ).result_rows
            except Exception as exc:
                result["error"] = exc

        worker = threading.Thread(target=slow)
        worker.start()
        time.sleep(1.0)
        served.proc.send_signal(signal.SIGTERM)
        worker.join(60)
        assert result.get("rows") == [(28,)], result
        assert served.proc.wait(60) == 0, served.log.read_text()[-2000:]
        lock = json.loads((home / "warehouse.lock").read_text() or "{}")
        assert "url" not in lock
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", served.port), timeout=2).close()
    finally:
        served.stop()
        shutil.rmtree(home, ignore_errors=True)
