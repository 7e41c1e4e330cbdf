"""The managed local Postgres cluster under $BANKDE_HOME/postgres, from the system's binaries."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bankde.errors import BankdeError, ConfigError
from bankde.settings import Settings

MIN_PG_MAJOR = 13
APP_PASSWORD_FILE = "pg_password"
CDC_PASSWORD_FILE = "pg_cdc_password"
ADMIN_PASSWORD_FILE = "pg_admin_password"
OWNER_PASSWORD_FILE = "pg_owner_password"

# Appended to postgresql.conf on creation. Why each line is there:
SERVER_CONF = """
# --- bankde managed cluster ---
listen_addresses = '127.0.0.1'          # loopback only
port = {port}
unix_socket_directories = ''            # TCP only: no socket dir to own when running as root
password_encryption = 'scram-sha-256'
wal_level = logical                     # logical replication for the CDC slot
max_replication_slots = 20
max_wal_senders = 20
max_slot_wal_keep_size = '{wal_keep}'   # a stuck slot cannot fill the disk
wal_sender_timeout = '60s'
shared_buffers = '256MB'
max_wal_size = '4GB'                    # bulk fills without checkpoint storms
checkpoint_timeout = '15min'
logging_collector = off
log_min_messages = warning
timezone = 'UTC'
"""

TLS_CONF = """
# --- bankde: TLS (db up --tls); certificate and key made by bankde's local CA ---
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_min_protocol_version = 'TLSv1.2'
"""

# No `replication` line: nobody may open a physical replication connection (pg_basebackup would
# copy the whole cluster, pg_authid included). A logical replication connection names its
# database, so the per-database lines `db init` appends are the only way in for the capture role.
HBA_HEAD = """# bankde: scram over loopback TCP only; the superuser only to the maintenance database.
host    postgres        {admin}        127.0.0.1/32            scram-sha-256
"""
HBA_DB = """host    {db:<15} {users:<14} 127.0.0.1/32            scram-sha-256
"""


@dataclass(frozen=True)
class ClusterStatus:
    state: str  # "running" | "stopped" | "absent"
    port: int
    data_dir: Path
    pid: int | None


def find_pg_bin() -> Path:
    """Directory of the newest PostgreSQL >= 13 server binaries (PATH first, then Debian's layout)."""
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major_of_dir, reverse=True):
        candidates.append(Path(found))
    for d in candidates:
        has_all = all((d / exe).exists() for exe in ("initdb", "pg_ctl", "postgres"))
        if has_all and _version_major(d) >= MIN_PG_MAJOR:
            return d
    raise ConfigError(
        "no PostgreSQL >= 13 server binaries found (initdb, pg_ctl, postgres): install the Debian "
        "package `postgresql` (apt-get install postgresql), or set BANKDE_PG_DSN / DB_HOST to use "
        "an existing server"
    )


def _major_of_dir(d: str) -> int:
    try:
        return int(Path(d).parent.name.split(".")[0])
    except ValueError:
        return 0


def _version_major(bindir: Path) -> int:
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return 0
    # "postgres (PostgreSQL) 15.18 (Debian ...)"
    for tok in out.split():
        head = tok.split(".")[0]
        if head.isdigit():
            return int(head)
    return 0


class ManagedCluster:
    """A private Postgres cluster; when run as root, the server runs as an unprivileged OS user."""

    def __init__(self, settings: Settings) -> None:
        if settings.external_source:
            raise ConfigError(
                "BANKDE_PG_DSN/DB_HOST point at an external server: `bankde db up/down` only "
                "manage the local cluster; unset them to use it"
            )
        self.settings = settings
        self.home = settings.home_dir
        self.root = self.home / "postgres"
        self.data_dir = self.root / "data"
        self.log_file = self.root / "postgres.log"
        self.secrets_dir = self.home / "secrets"
        self.tls_dir = self.home / "tls"
        self.port = settings.pg_port

    # -- identity -------------------------------------------------------------------------
    def _run_as(self) -> pwd.struct_passwd | None:
        """The OS user that owns and runs the server; None means the current (non-root) user."""
        if os.geteuid() != 0:
            return None
        wanted = self.settings.pg_os_user
        names = [wanted] if wanted else ["postgres", "nobody"]
        for name in names:
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        raise ConfigError(
            f"running as root needs an unprivileged OS user for Postgres: user {names[0]!r} does "
            "not exist; create it or set BANKDE_PG_OS_USER"
        )

    def _run(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        user = self._run_as()
        kwargs: dict[str, object] = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8"
        if user is not None:
            kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
            env["HOME"] = user.pw_dir
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            env=env,
            cwd=str(self.root if self.root.exists() else self.home),
            **kwargs,  # type: ignore[call-overload]
        )
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise BankdeError(
                f"{Path(args[0]).name} failed: {detail[-1] if detail else proc.returncode} "
                f"(log: {self.log_file})"
            )
        return proc

    # -- secrets --------------------------------------------------------------------------
    def _secret(self, name: str) -> str:
        self.secrets_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.secrets_dir, 0o700)
        path = self.secrets_dir / name
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24))
        return path.read_text().strip()

    def app_password(self) -> str:
        return self._secret(APP_PASSWORD_FILE)

    def admin_password(self) -> str:
        return self._secret(ADMIN_PASSWORD_FILE)

    def owner_password(self) -> str:
        return self._secret(OWNER_PASSWORD_FILE)

    def cdc_password(self) -> str:
        return self._secret(CDC_PASSWORD_FILE)

    # -- lifecycle ------------------------------------------------------------------------
    def status(self) -> ClusterStatus:
        if not (self.data_dir / "PG_VERSION").exists():
            return ClusterStatus("absent", self.port, self.data_dir, None)
        pid = self._postmaster_pid()
        state = "running" if pid is not None and _pid_alive(pid) else "stopped"
        return ClusterStatus(state, self.port, self.data_dir, pid if state == "running" else None)

    def _postmaster_pid(self) -> int | None:
        pidfile = self.data_dir / "postmaster.pid"
        try:
            first = pidfile.read_text().splitlines()[0]
            return int(first)
        except (OSError, IndexError, ValueError):
            return None

    def _check_reachable(self, user: pwd.struct_passwd) -> None:
        """The server user must be able to walk down to its data directory."""
        for parent in [self.home, *self.home.parents]:
            st = parent.stat()
            if parent == self.home:
                continue
            if not (st.st_mode & stat.S_IXOTH) and st.st_uid != user.pw_uid:
                raise ConfigError(
                    f"BANKDE_HOME={self.home} is under {parent}, which user {user.pw_name!r} "
                    "(who runs Postgres when bankde runs as root) cannot enter: set BANKDE_HOME "
                    "to a directory outside it, e.g. under /tmp or /var/tmp"
                )

    def init(self) -> bool:
        """Create the cluster if absent. Returns True when it was created now."""
        if (self.data_dir / "PG_VERSION").exists():
            return False
        bindir = find_pg_bin()
        user = self._run_as()
        private_home(self.home, user)
        if self.root.exists():  # a half-made cluster from an interrupted init
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        pwfile = self.root / ".initpw"
        if user is not None:
            self._check_reachable(user)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o700)
        try:
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.admin_password() + "\n")
            if user is not None:
                os.chown(pwfile, user.pw_uid, user.pw_gid)
            # The bootstrap superuser exists only to create roles and databases (`db init`);
            # everything else runs as the non-superuser owner, application and capture roles.
            self._run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.settings.admin_user,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write(SERVER_CONF.format(port=self.port, wal_keep="8GB"))
        (self.data_dir / "pg_hba.conf").write_text(HBA_HEAD.format(admin=self.settings.admin_user))
        self.allow_database(self.settings.db_name, reload=False)
        return True

    # -- access -----------------------------------------------------------------------------
    def allow_database(self, dbname: str, reload: bool = True, users: tuple[str, ...] = ()) -> bool:
        """pg_hba lines letting the owner, application and capture roles (or `users`) into
        `dbname` only (the capture role's logical replication connections included)."""
        s = self.settings
        hba = self.data_dir / "pg_hba.conf"
        lines = [HBA_DB.format(db=dbname, users=",".join(users))] if users else [
            HBA_DB.format(db=dbname, users=f"{s.owner_user},{s.db_user}"),
            HBA_DB.format(db=dbname, users=s.cdc_user),
        ]  # fmt: skip
        text = hba.read_text()
        missing = [ln for ln in lines if ln not in text]
        if not missing:
            return False
        with open(hba, "a") as f:  # appending keeps the file's owner (the server's OS user)
            f.write("".join(missing))
        if reload and self.status().state == "running":
            self._run([str(find_pg_bin() / "pg_ctl"), "-D", str(self.data_dir), "reload"])
            time.sleep(0.2)  # the postmaster rereads pg_hba.conf on SIGHUP, asynchronously
        return True

    def enable_tls(self) -> bool:
        """Local CA under $BANKDE_HOME/tls, a server certificate in the data directory, ssl=on.
        True when TLS was switched on now (a running server is reloaded)."""
        from bankde.source.tls import ensure_ca, issue_server_cert

        conf = self.data_dir / "postgresql.conf"
        if "ssl = on" in conf.read_text():
            return False
        ca = ensure_ca(self.tls_dir)
        crt, key = self.data_dir / "server.crt", self.data_dir / "server.key"
        issue_server_cert(ca, crt, key)
        user = self._run_as()
        if user is not None:  # the server refuses a key it does not own
            for path in (crt, key):
                os.chown(path, user.pw_uid, user.pw_gid)
        with open(conf, "a") as f:
            f.write(TLS_CONF)
        if self.status().state == "running":
            self._run([str(find_pg_bin() / "pg_ctl"), "-D", str(self.data_dir), "reload"])
            time.sleep(0.5)
        return True

    def start(self, timeout: float = 60.0) -> bool:
        """Start the server. Returns False when it was already running."""
        if self.status().state == "running":
            return False
        if _port_in_use(self.port):
            raise ConfigError(
                f"port {self.port} on 127.0.0.1 is taken by another program: set BANKDE_PG_PORT "
                "to a free port"
            )
        bindir = find_pg_bin()
        if not self.log_file.exists():  # private from the first line on (pg_ctl obeys umask)
            fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
            user = self._run_as()
            if user is not None:
                os.chown(self.log_file, user.pw_uid, user.pw_gid)
        self._run(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-o",
                f"-p {self.port}",
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ]
        )
        return True

    def stop(self) -> bool:
        """Stop the server (fast shutdown). Returns False when it was not running."""
        if self.status().state != "running":
            return False
        bindir = find_pg_bin()
        self._run([str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"])
        return True

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _port_in_use(self.port):
                return
            time.sleep(0.1)
        raise BankdeError(
            f"Postgres did not start listening on port {self.port} (log: {self.log_file})"
        )


def private_home(home: Path, server_user: pwd.struct_passwd | None = None) -> None:
    """$BANKDE_HOME readable by its owner only (0700). When root runs the server as another OS
    user, that user's group may traverse it (0710) to reach its data directory, nothing more."""
    home.mkdir(parents=True, exist_ok=True)
    if server_user is None:
        os.chmod(home, 0o700)
    else:
        os.chown(home, -1, server_user.pw_gid)
        os.chmod(home, 0o710)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
