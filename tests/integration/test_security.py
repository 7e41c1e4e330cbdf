"""Issue 10: least privilege, no secret in a log/argv/readable file, no clear card number, TLS end to end."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from bankde.settings import Settings
from bankde.source.cluster import ManagedCluster, find_pg_bin
from bankde.source.connection import admin_info, cdc_info, connect, owner_info, source_info
from bankde.source.pan import PGCRYPTO_DECRYPT, load_key, luhn_valid
from bankde.source.tls import ensure_ca
from tests.conftest import cli_env, free_port, make_home

BANKDE = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "bankde")
# A card number: 13-19 digits standing alone (no digit or letter either side: a run of digits
# inside hex text such as bytea's '\\x4f09...' is no number), network prefix 2-6, Luhn-valid.
# ClickHouse stores a String as a length byte then the bytes: a stored number stands alone.
PAN_RE = re.compile(rb"(?<![0-9A-Za-z])[2-6][0-9]{12,18}(?![0-9A-Za-z])")


def bankde(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BANKDE, *args], env=env, capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"{proc.args} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def one_line_exit_2(proc: subprocess.CompletedProcess[str], *names: str) -> None:
    assert proc.returncode == 2, f"{proc.args} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stderr.count("\n") == 1, proc.stderr
    for name in names:
        assert name in proc.stderr, proc.stderr


def card_numbers(data: bytes) -> list[bytes]:
    return [m for m in PAN_RE.findall(data) if luhn_valid(m.decode())]


def packed_members(data: bytes) -> dict[str, bytes] | None:
    """The files inside a packed part (`data.packed`: small parts written as one file): version
    byte 0, uint64 count, then per file a varint name length, the name, uint64 offset and size
    (little-endian), then the files. None when `data` is not laid out so."""
    if len(data) < 9 or data[0] != 0:
        return None
    count, pos, entries = int.from_bytes(data[1:9], "little"), 9, {}
    for _ in range(count):
        length = shift = 0
        while pos < len(data):
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        name = data[pos : pos + length].decode(errors="replace")
        offset = int.from_bytes(data[pos + length : pos + length + 8], "little")
        size = int.from_bytes(data[pos + length + 8 : pos + length + 16], "little")
        pos += length + 16
        if offset + size > len(data):
            return None
        entries[name] = data[offset : offset + size]
    return entries


def clickhouse_plain(data: bytes) -> bytes | None:
    """The bytes of a ClickHouse compressed file (data.bin, marks, index) as stored before
    compression: blocks of checksum(16) method(1) size(4) raw_size(4) payload; LZ4 (0x82) and
    none (0x02) are the codecs this warehouse uses. None when `data` is not such a file.
    A scan must see these: compression splits a digit run, or hides it behind a back-reference."""
    import lz4.block
    import zstandard

    out, pos = bytearray(), 0
    while pos < len(data):
        if pos + 25 > len(data):
            return None
        method = data[pos + 16]
        size = int.from_bytes(data[pos + 17 : pos + 21], "little")
        raw_size = int.from_bytes(data[pos + 21 : pos + 25], "little")
        payload = data[pos + 25 : pos + 16 + size]
        if size < 9 or pos + 16 + size > len(data):
            return None
        if method == 0x82:
            out += lz4.block.decompress(payload, uncompressed_size=raw_size)
        elif method == 0x90:
            out += zstandard.ZstdDecompressor().decompress(payload, max_output_size=raw_size)
        elif method == 0x02:
            out += payload
        else:
            raise AssertionError(
                f"codec 0x{method:02x} in the warehouse: teach this scan to read it"
            )
        pos += 16 + size
    return bytes(out)


# Every text value of every warehouse table (numbers are ids, versions, LSNs: not card numbers).
DUMP_TABLES = """
from bankde.settings import get_settings
from bankde.warehouse.session import open_session
wh = open_session(get_settings()).warehouse()  # the script's one session, released at exit
cols = wh.query(
    "SELECT database, table, groupArray(name) FROM system.columns WHERE type LIKE '%String%' "
    "AND database NOT IN ('system', 'INFORMATION_SCHEMA', 'information_schema') GROUP BY 1, 2"
)
for db, table, names in cols:
    print("==", f"{db}.{table}")
    select = ", ".join(f"`{n}`" for n in names)
    for row in wh.query(f"SELECT {select} FROM `{db}`.`{table}`"):
        print("\\t".join(str(v) for v in row))
"""


def secrets_of(home: Path) -> dict[str, str]:
    """Every secret bankde made under this home (passwords, the card-number key)."""
    return {p.name: p.read_text().strip() for p in (home / "secrets").iterdir() if p.is_file()}


def admin_sql(settings: Settings, *statements: str) -> None:
    with connect(admin_info(settings), autocommit=True) as conn:
        for stmt in statements:
            conn.execute(stmt)  # type: ignore[arg-type]


# --- least privilege, on the session cluster ------------------------------------------------


def test_application_role_cannot_run_programs_or_change_the_schema(
    source_settings: Settings,
) -> None:
    with connect(source_info(source_settings)) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication FROM pg_roles "
            "WHERE rolname = current_user"
        ).fetchone()
        assert row == (False, False, False, False)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("COPY (SELECT 1) TO PROGRAM 'id > /tmp/bankde-pwned'")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT pg_read_file('/etc/passwd')")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DROP TABLE bank.transaction")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE bank.x (i int)")
        conn.rollback()
        # What the filler needs works: write rows, move sequences, skip FK triggers (granted).
        conn.execute("SET session_replication_role = replica")
        conn.execute("SELECT setval('bank.terminal_terminal_id_seq', 10)")
    assert not Path("/tmp/bankde-pwned").exists()
    with connect(owner_info(source_settings)) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert row == (False, False)
        owner = conn.execute(
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'bank'"
        ).fetchone()
        assert owner == (source_settings.owner_user,)


def test_capture_role_reads_only_captured_tables_and_cannot_copy_the_cluster(
    source_settings: Settings, tmp_path: Path
) -> None:
    with connect(owner_info(source_settings)) as conn:
        conn.execute("CREATE TABLE bank.not_published (secret text)")
        conn.execute("CREATE TABLE public.elsewhere (secret text)")
        conn.commit()
    with connect(cdc_info(source_settings)) as conn:
        assert conn.execute("SELECT count(*) FROM bank.card").fetchone() == (0,)
        for table in ("bank.not_published", "public.elsewhere"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT * FROM {table}")
            conn.rollback()
    cdc = cdc_info(source_settings).params
    env = {**os.environ, "PGPASSWORD": cdc["password"]}
    proc = subprocess.run(
        [str(find_pg_bin() / "pg_basebackup"), "-h", "127.0.0.1", "-p", cdc["port"],
         "-U", cdc["user"], "-D", str(tmp_path / "copy"), "-X", "none", "-w"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "no pg_hba.conf entry for replication connection" in proc.stderr, proc.stderr
    assert not (tmp_path / "copy" / "global" / "pg_authid").exists()
    # The superuser is let into the maintenance database only.
    admin = admin_info(source_settings).with_db(source_settings.db_name)
    with pytest.raises(Exception, match=r"no pg_hba\.conf entry"):
        connect(admin).close()


# --- one TLS cluster of this module's own: the whole flow, then what it left behind -----------


@dataclass
class Flow:
    settings: Settings
    env: dict[str, str]
    home: Path
    log: Path
    outputs: list[str]
    cmdlines: list[str]  # every process of the machine, sampled all along
    ours: list[str]  # those whose environment names this flow's home


def _cmdlines(home: Path, ours: set[int]) -> tuple[list[str], list[str]]:
    """Every process's command line, and those of the processes working for `home`: their
    environment names it (the CLI, Postgres' clients), or their parent is such a process
    (Airflow's components retitle themselves with setproctitle, which overwrites the environment
    /proc shows; a task runner is a child of the executor's supervisor). `ours` (pids) grows."""
    every, procs = [], []
    mark = f"BANKDE_HOME={home}\0".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                line = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            every.append(line)
            try:
                marked = mark in (entry / "environ").read_bytes()
            except OSError:
                marked = False
            procs.append((int(entry.name), ppid, line, marked))
    ours.intersection_update(pid for pid, _, _, _ in procs)  # ended: the pid may be reused
    mine: list[str] = []
    grew = True
    while grew:  # children listed before their parent join on the next pass
        grew = False
        for pid, ppid, line, marked in procs:
            if pid not in ours and (marked or ppid in ours):
                ours.add(pid)
                mine.append(line)
                grew = True
    mine += [line for pid, _, line, _ in procs if pid in ours and line not in mine]
    return every, mine


def _watch_ps(home: Path, stop: threading.Event, seen: list[str], ours: list[str]) -> None:
    pids: set[int] = set()
    while not stop.is_set():
        every, mine = _cmdlines(home, pids)
        seen.extend(every)
        ours.extend(mine)
        time.sleep(0.2)


def _airflow_runs_a_dag(env: dict[str, str], home: Path, timeout: float = 900) -> str:
    """`bankde airflow` (standalone: API server, scheduler, DAG processor, task runners) until
    its scheduler has run cdc_to_dwh to success on this source, then Ctrl-C; its output."""
    port = free_port()
    db = home / "airflow" / "airflow.db"
    log = home.parent / f"{home.name}-airflow.out"  # outside the home: the home is scanned
    with open(log, "w+b") as out:
        proc = subprocess.Popen(
            [BANKDE, "airflow", "--port", str(port)], env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + timeout
            state = None
            while state != "success":
                assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, (
                    f"cdc_to_dwh: {state}\n" + log.read_text(errors="replace")[-3000:]
                )
                time.sleep(2)
                if db.exists():
                    try:
                        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                            row = conn.execute(
                                "SELECT state FROM dag_run WHERE dag_id = 'cdc_to_dwh' "
                                "ORDER BY id DESC LIMIT 1"
                            ).fetchone()
                    except sqlite3.Error:
                        continue  # not migrated yet, or locked by a writer
                    state = row[0] if row else None
                    assert state != "failed", log.read_text(errors="replace")[-3000:]
        finally:
            proc.send_signal(signal.SIGINT)  # standalone's clean stop, forwarded by bankde
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            out.seek(0)
            text = out.read().decode(errors="replace")
        log.unlink()
    assert proc.returncode == 0, text[-3000:]
    return text


@pytest.fixture(scope="module")
def flow() -> Iterator[Flow]:
    """db up --tls, statement logging on, db init twice and a failing one, fill, snapshot,
    stream (native and Debezium), reconcile; `ps` sampled all along."""
    home = make_home("bankde-sec-")
    settings = Settings(home=home, pg_port=free_port(), pg_dsn=None, db_host=None)
    env = cli_env(settings, BANKDE_CDC_SLOT="sec_slot", BANKDE_CDC_PUBLICATION="sec_pub")
    outputs: list[str] = []
    seen: list[str] = []
    ours: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_ps, args=(home, stop, seen, ours), daemon=True)
    watcher.start()

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = bankde(env, *args)
        outputs.extend([proc.stdout, proc.stderr])
        return ok(proc) if check else proc

    try:
        run("db", "up", "--tls")
        admin_sql(
            settings,
            "ALTER SYSTEM SET log_statement = 'all'",
            "ALTER SYSTEM SET log_min_error_statement = 'info'",
            "ALTER SYSTEM SET log_min_messages = 'info'",
            "ALTER SYSTEM SET log_connections = on",
            "SELECT pg_reload_conf()",
        )
        run("db", "init")
        run("db", "init")
        # A failing init: the schema refuses a database that holds clear card numbers.
        with connect(owner_info(settings)) as conn:
            conn.execute("ALTER TABLE bank.card ADD COLUMN pan text")
            conn.commit()
        failed = run("db", "init", check=False)
        assert failed.returncode != 0 and "clear" in failed.stderr
        with connect(owner_info(settings)) as conn:
            conn.execute("ALTER TABLE bank.card DROP COLUMN pan")
            conn.commit()
        run(
            "fill",
            "--n-new-txns",
            "6000",
            "--backfill-days",
            "2",
            "--backfill-txns-per-day",
            "1000",
        )
        run("cdc", "sync", "--no-progress")
        # Streaming while the filler writes, then the Debezium engine over the same TLS.
        runner = subprocess.Popen(
            [BANKDE, "cdc", "run", "--no-progress"], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            run("fill", "--n-new-txns", "3000")
            time.sleep(3)
        finally:
            runner.terminate()
            out, err = runner.communicate(timeout=60)
            outputs.extend([out, err])
        assert runner.returncode == 0, err
        run("cdc", "sync", "--no-progress")
        run("reconcile")
        # The rest of the product on the same TLS source: the one-process loop and the demo
        # (dbt build: stg, ods, marts), all under the `ps` sampler.
        run("run", "--duration", "6", "--dbt-every", "600", "--rate", "200")
        run("demo", "--size", "small", "--quiet")
        outputs.append(_airflow_runs_a_dag(env, home))
        if shutil.which("java") or os.environ.get("JAVA_HOME"):
            run("cdc", "sync", "--engine", "debezium", "--no-progress")
        yield Flow(settings, env, home, home / "postgres" / "postgres.log", outputs, seen, ours)
    finally:
        stop.set()
        watcher.join(timeout=5)
        ManagedCluster(settings).destroy()
        shutil.rmtree(home, ignore_errors=True)


def test_no_password_in_server_log_output_or_any_command_line(flow: Flow) -> None:
    log = flow.log.read_text(errors="replace")
    # The logging was on: role statements and the failed init are in the log, as verifiers.
    assert "ALTER ROLE" in log and "SCRAM-SHA-256$" in log
    assert "clear card numbers" in log
    secrets = secrets_of(flow.home)
    assert {
        "pg_admin_password",
        "pg_owner_password",
        "pg_password",
        "pg_cdc_password",
        "pan_key",
    } <= set(secrets)
    # Airflow's UI password is a secret too (it is in its 0600 file, never printed).
    airflow = flow.home / "airflow"
    ui = json.loads((airflow / "simple_auth_manager_passwords.json.generated").read_text())
    secrets["airflow_admin"] = ui["admin"]
    lines = "\n".join(flow.cmdlines)
    # The sampler saw this flow's CLI, Airflow's components and a task runner of a DAG run.
    ours = "\n".join(flow.ours)
    for process in ("bankde cdc run", "bankde airflow", "airflow api", "airflow worker --"):
        assert process in ours, sorted({c[:100] for c in flow.ours})
    # Nothing Airflow wrote (task logs, its DB, its config) holds a password bankde passed on.
    written = {p: p.read_bytes() for p in airflow.rglob("*") if p.is_file()}
    assert any("task_id=" in str(p) for p in written)  # task logs were written
    for name, value in secrets.items():
        for path, data in written.items():
            if (
                name != "airflow_admin"
                or path.name != "simple_auth_manager_passwords.json.generated"
            ):
                assert value.encode() not in data, f"{name} in {path}"
        assert value not in log, f"{name} in postgres.log"
        assert value not in lines, f"{name} in a process's command line"
        for text in flow.outputs:
            assert value not in text, f"{name} printed"


def test_every_connection_was_tls_verified(flow: Flow) -> None:
    log = flow.log.read_text(errors="replace")
    authorized = [ln for ln in log.splitlines() if "connection authorized" in ln]
    assert authorized
    assert all("SSL enabled" in ln for ln in authorized), [
        ln for ln in authorized if "SSL enabled" not in ln
    ][:3]
    # psycopg (filler, status), psycopg2 replication, the ADBC snapshot and Debezium all came.
    assert any("replication connection authorized" in ln for ln in authorized)
    assert any("bankde_snapshot" in ln for ln in authorized)
    if shutil.which("java") or os.environ.get("JAVA_HOME"):
        assert any("Debezium" in ln or "PostgreSQL JDBC" in ln for ln in authorized)
    psql = ok(bankde(flow.env, "db", "psql", "-At", "-c",
                     "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))  # fmt: skip
    assert psql.stdout.strip() == "t"
    tls = flow.home / "tls"
    assert oct((tls / "ca.key").stat().st_mode & 0o777) == "0o600"
    assert oct((flow.home / "postgres" / "data" / "server.key").stat().st_mode & 0o777) == "0o600"


def test_wrong_ca_and_wrong_host_fail_with_one_line(flow: Flow, tmp_path: Path) -> None:
    other = ensure_ca(tmp_path / "other")
    p = source_info(flow.settings).params
    base = f"port={p['port']} dbname={p['dbname']} user={p['user']} sslmode=verify-full"
    env = {**flow.env, "DB_PASSWORD": p["password"]}
    wrong_ca = bankde({**env, "BANKDE_PG_DSN": f"host=127.0.0.1 {base} sslrootcert={other.ca_cert}"}, "fill", "--n-new-txns", "10")  # fmt: skip
    one_line_exit_2(wrong_ca, "sslrootcert")
    wrong_host = bankde({**env, "BANKDE_PG_DSN": f"host=bankde.invalid hostaddr=127.0.0.1 {base} sslrootcert={p['sslrootcert']}"}, "fill", "--n-new-txns", "10")  # fmt: skip
    one_line_exit_2(wrong_host, "does not match", "bankde.invalid")


def test_bad_settings_exit_2_naming_them_and_write_nothing(flow: Flow, tmp_path: Path) -> None:
    def txns() -> int:
        with connect(owner_info(flow.settings)) as conn:
            row = conn.execute("SELECT count(*) FROM bank.transaction").fetchone()
            return int(row[0]) if row else -1

    before = txns()
    p = source_info(flow.settings).params
    dsn = f"host=127.0.0.1 port={p['port']} dbname={p['dbname']} user={p['user']}"
    unknown = bankde({**flow.env, "BANKDE_PG_DSN": dsn + " sslrootcrt=/tmp/ca.crt"}, "fill")
    one_line_exit_2(unknown, "BANKDE_PG_DSN", "sslrootcrt")
    missing_ca = bankde(
        {**flow.env, "BANKDE_PG_DSN": dsn + " sslrootcert=/nonexistent/ca.crt"}, "fill"
    )
    one_line_exit_2(missing_ca, "BANKDE_PG_DSN", "sslrootcert=/nonexistent/ca.crt")
    no_key = bankde({**flow.env, "BANKDE_PAN_KEY_FILE": str(tmp_path / "absent")}, "fill")
    one_line_exit_2(no_key, "BANKDE_PAN_KEY_FILE")
    short = tmp_path / "short"
    short.write_text("00" * 16)
    short_key = bankde({**flow.env, "BANKDE_PAN_KEY_FILE": str(short)}, "fill")
    one_line_exit_2(short_key, "BANKDE_PAN_KEY_FILE", "16 bytes")
    assert txns() == before


def test_card_numbers_are_encrypted_at_the_source_and_absent_downstream(flow: Flow) -> None:
    key = load_key(flow.settings, create=False)
    with connect(owner_info(flow.settings)) as conn:
        columns = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'bank' "
            "AND table_name = 'card'").fetchall()]  # fmt: skip
        assert "pan" not in columns and {"pan_enc", "pan_hash", "pan_last4"} <= set(columns)
        rows = conn.execute(
            f"SELECT pan_last4, pan_hash, {PGCRYPTO_DECRYPT} FROM bank.card", (key.enc_key,)
        ).fetchall()
    assert rows
    for last4, pan_hash, pan in rows:  # pgcrypto reads back what the filler encrypted
        assert luhn_valid(pan) and pan.endswith(last4) and key.lookup_hash(pan) == pan_hash
    # Every byte of the warehouse directory, and every value of every warehouse table.
    files = [p for p in (flow.home / "warehouse").rglob("*") if p.is_file()]
    assert len(files) > 50
    clear = {pan.encode() for _, _, pan in rows}
    found = {}
    decompressed = 0
    packed = 0
    for path in files:
        # A packed part's files are read one by one, like a full part's (docs/cdc.md, Latency).
        members = packed_members(path.read_bytes()) if path.name == "data.packed" else None
        assert members is not None or path.name != "data.packed", f"{path}: not readable"
        packed += members is not None
        items = members.items() if members else [(path.name, path.read_bytes())]
        for name, stored in items:
            compressed = name.endswith((".bin", ".cmrk4", ".cidx"))
            plain = clickhouse_plain(stored) if compressed else None
            decompressed += plain is not None
            readable = plain if plain is not None else stored
            found[f"{path}:{name}" if members else str(path)] = card_numbers(readable) + [
                pan for pan in clear if pan in stored or pan in readable
            ]
    assert not {p: f for p, f in found.items() if f}
    assert decompressed > 10  # the column files were read as stored, not only as compressed
    assert packed > 0  # small parts are packed: their files were read from inside
    # Every value of every table, as text, read by a process of its own (chDB: one per dir).
    dump = subprocess.run(
        [sys.executable, "-c", DUMP_TABLES], env=flow.env, capture_output=True, timeout=600
    )
    assert dump.returncode == 0, dump.stderr.decode(errors="replace")
    tables = re.findall(rb"^== (\S+)$", dump.stdout, flags=re.MULTILINE)
    assert any(t.endswith(b"raw.card") for t in tables) and any(b"stg_cards" in t for t in tables)
    assert not card_numbers(dump.stdout)
    assert not any(pan in dump.stdout for pan in clear)
    # The scanner itself finds a card number when there is one.
    assert card_numbers(b"raw,4559510000644497,x") == [b"4559510000644497"]
    assert card_numbers(b"\x104559510000644497\x10") == [b"4559510000644497"]  # String in a part
    assert card_numbers(b"\\x4559510000644497ab") == []  # digits inside hex text
    import lz4.block

    column = b"\x10" + b"4559510000644497\x10" * 3
    payload = lz4.block.compress(column, store_size=False)
    block = bytes(16) + b"\x82" + (9 + len(payload)).to_bytes(4, "little")
    block += len(column).to_bytes(4, "little") + payload
    assert len(card_numbers(block)) < 3  # compression hides the repeats behind a back-reference
    assert len(card_numbers(clickhouse_plain(block) or b"")) == 3


def test_home_is_private_and_nobody_reads_anything(flow: Flow) -> None:
    lock = flow.home / "warehouse.lock"
    assert lock.exists() and oct(lock.stat().st_mode & 0o777) == "0o600"
    loose = []
    for path in [flow.home, *flow.home.rglob("*")]:
        st = path.lstat()
        if path.is_symlink():
            continue
        allowed = 0o010 if path == flow.home and os.geteuid() == 0 else 0  # server's group: x
        if st.st_mode & 0o077 & ~allowed:
            loose.append(f"{oct(st.st_mode & 0o777)} {path}")
    assert not loose, loose[:10]
    if os.geteuid() != 0:
        pytest.skip("switching to user nobody needs root")
    # The venv's interpreter may sit where nobody cannot go; the system one runs the probe.
    python_for_nobody = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    paths = "\n".join(str(p) for p in [flow.home, *flow.home.rglob("*")])
    probe = (
        "import os, sys\n"
        "read = []\n"
        "for p in sys.stdin.read().splitlines():\n"
        "    try:\n"
        "        os.listdir(p) if os.path.isdir(p) else open(p, 'rb').read(1)\n"
        "        read.append(p)\n"
        "    except OSError:\n"
        "        pass\n"
        "print(len(read), read[:5])\n"
    )
    proc = subprocess.run(
        [python_for_nobody, "-I", "-c", probe], input=paths, user=65534, group=65534,
        extra_groups=[], capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("0 "), proc.stdout


def test_db_init_external_reports_what_is_missing(flow: Flow) -> None:
    p = source_info(flow.settings).params
    dsn = " ".join(f"{k}={v}" for k, v in p.items() if k != "password")
    env = {
        **flow.env,
        "BANKDE_PG_DSN": dsn,
        "DB_PASSWORD": p["password"],
        "BANKDE_CDC_PASSWORD": cdc_info(flow.settings).params["password"],
    }
    good = ok(bankde(env, "db", "init", "--external"))
    assert "MISSING" not in good.stdout and "no more" in good.stdout
    with connect(owner_info(flow.settings)) as conn:
        conn.execute("REVOKE SELECT ON truth.fraud_label FROM bankde_cdc")
        conn.commit()
    try:
        bad = bankde(env, "db", "init", "--external")
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert "MISSING" in bad.stdout and "truth.fraud_label" in bad.stdout
    finally:
        with connect(owner_info(flow.settings)) as conn:
            conn.execute(sql.SQL("GRANT SELECT ON truth.fraud_label TO bankde_cdc"))
            conn.commit()
