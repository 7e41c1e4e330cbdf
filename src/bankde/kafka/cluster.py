"""The managed single-node Kafka (KRaft) broker and Connect worker under $BANKDE_HOME/kafka."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bankde.errors import BankdeError, ConfigError
from bankde.kafka.jars import Jars, default_cache, find_java, resolve
from bankde.settings import Settings
from bankde.source.tls import write_private

# Heaps are bounded: the machine also runs Postgres, the warehouse and dbt.
BROKER_HEAP = "-Xmx512m"
WORKER_HEAP = "-Xmx1g"
CONNECT_GROUP = "bankde-connect"
# Connect's internal topics (one partition each is enough on one node).
CONNECT_TOPICS = ("bankde-connect-configs", "bankde-connect-offsets", "bankde-connect-status")

SERVER_PROPERTIES = """\
# bankde managed broker: one node that is its own KRaft controller, loopback only.
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
log.dirs={data}
# One node: every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
# Consumers of a fresh group start at once instead of waiting 3 s for more members.
group.initial.rebalance.delay.ms=0
"""

WORKER_PROPERTIES = """\
# bankde managed Kafka Connect worker (distributed mode, one worker), REST on loopback only.
bootstrap.servers=127.0.0.1:{port}
group.id={group}
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
config.storage.topic={topics[0]}
offset.storage.topic={topics[1]}
status.storage.topic={topics[2]}
config.storage.replication.factor=1
offset.storage.replication.factor=1
status.storage.replication.factor=1
# One worker: Connect's default 25 offset and 5 status partitions would only cost memory.
offset.storage.partitions=1
status.storage.partitions=1
listeners=http://127.0.0.1:{connect_port}
rest.advertised.host.name=127.0.0.1
rest.advertised.port={connect_port}
plugin.path={plugin_path}
# Debezium's and Kafka's jars declare their plugins in META-INF/services: the reflective scan of
# every class (hybrid_warn, the default) took 37 of the worker's 54 s of start-up here.
plugin.discovery=service_load
# Source connectors write records and their offsets in one Kafka transaction: a killed worker
# re-delivers nothing that a read_committed consumer has seen (connectors opt in with
# exactly.once.support=required). BANKDE_KAFKA_EXACTLY_ONCE=false turns it off.
exactly.once.source.support={exactly_once}
# Without exactly-once, source offsets are flushed this often (Connect's default: 60 s): what a
# killed worker re-sends, and until the first flush a restarted connector snapshots again.
offset.flush.interval.ms=10000
# The connector files (debezium/*.json) name no host or credential: `${{file:...}}` reads them from
# a 0600 properties file under the worker's working directory ($BANKDE_HOME), `${{env:...}}` from
# its environment.
config.providers=file,env
config.providers.file.class=org.apache.kafka.common.config.provider.FileConfigProvider
config.providers.env.class=org.apache.kafka.common.config.provider.EnvVarConfigProvider
"""

LOG4J2 = """\
# Kafka's jars bring no slf4j binding: bankde adds log4j2's and logs to one file per process.
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:bankde.log.file}
appender.file.filePermissions = rw-------
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = org.apache.kafka
logger.kafka.level = info
"""


@dataclass(frozen=True)
class ProcState:
    name: str  # "broker" | "worker"
    running: bool
    pid: int | None
    port: int


class ManagedKafka:
    """One broker and one Connect worker; `up` is idempotent, `down` stops only what `up` started
    (the pids in broker.pid / worker.pid, checked against their command line)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home_dir
        self.root = self.home / "kafka"
        jars_dir = settings.kafka_jars_dir
        self.lib = jars_dir.expanduser().resolve() if jars_dir else default_cache()
        self.conf = self.root / "config"
        self.data = self.root / "data"
        self.logs = self.root / "logs"
        self.state_file = self.root / "state.json"
        # Launch to ready, per process started by the last up() (docs/kafka.md quotes them).
        self.ready_seconds: dict[str, float] = {}

    # -- ports ------------------------------------------------------------------------------
    def ports(self) -> dict[str, int]:
        """The ports of the running (or last started) cluster; the settings' before the first up."""
        try:
            saved = json.loads(self.state_file.read_text())
            return {k: int(saved[k]) for k in ("broker", "controller", "connect")}
        except (OSError, ValueError, KeyError, TypeError):
            s = self.settings
            return {
                "broker": s.kafka_port,
                "controller": s.kafka_controller_port,
                "connect": s.connect_port,
            }

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports()['broker']}"

    @property
    def connect_url(self) -> str:
        return f"http://127.0.0.1:{self.ports()['connect']}"

    # -- processes --------------------------------------------------------------------------
    def _pid_file(self, name: str) -> Path:
        return self.root / f"{name}.pid"

    def _marker(self, name: str) -> str:
        """A string only our process of that name has on its command line."""
        return str(self.conf / ("server.properties" if name == "broker" else "worker.properties"))

    def _pid(self, name: str) -> int | None:
        try:
            pid = int(self._pid_file(name).read_text().strip())
        except (OSError, ValueError):
            return None
        cmdline = ""
        for _ in range(50):
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                return None
            if raw:
                cmdline = raw.replace(b"\0", b" ").decode(errors="replace")
                break
            # Empty while the java launcher re-executes itself (or for a zombie): look again.
            if not _alive(pid):
                return None
            time.sleep(0.02)
        # A recycled pid belongs to some other program: never signal it.
        return pid if self._marker(name) in cmdline else None

    def state(self, name: str) -> ProcState:
        pid = self._pid(name)
        port = self.ports()["broker" if name == "broker" else "connect"]
        return ProcState(name, pid is not None, pid, port)

    # -- lifecycle --------------------------------------------------------------------------
    def up(self, timeout: float = 180.0) -> dict[str, bool]:
        """Start whichever of broker and worker is not running; {name: started now}."""
        java = find_java()
        broker_up, worker_up = self.state("broker").running, self.state("worker").running
        if broker_up and worker_up:
            return {"broker": False, "worker": False}
        for d in (self.root, self.conf, self.logs):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        ports = self.ports() if (broker_up or worker_up) else self._choose_ports()
        wanted = [n for n, running in (("broker", broker_up), ("worker", worker_up)) if not running]
        for name in wanted:
            key = "broker" if name == "broker" else "connect"
            busy = [ports[key]] + ([ports["controller"]] if name == "broker" else [])
            for port in busy:
                if port_in_use(port):
                    var = {
                        ports["broker"]: "BANKDE_KAFKA_PORT",
                        ports["controller"]: "BANKDE_KAFKA_CONTROLLER_PORT",
                        ports["connect"]: "BANKDE_CONNECT_PORT",
                    }[port]
                    raise ConfigError(
                        f"port {port} on 127.0.0.1 is taken by another program: set {var} to a "
                        "free port"
                    )
        jars = resolve(self.lib, self.logs / "maven.log")
        self._write_config(ports, jars)
        started = {"broker": False, "worker": False}
        deadline = time.monotonic() + timeout
        if not broker_up:
            self._format(java, jars)
            t0 = time.monotonic()
            self._spawn("broker", java, jars, BROKER_HEAP, "kafka.Kafka")
            started["broker"] = True
            self._wait_broker(deadline)
            self.ready_seconds["broker"] = time.monotonic() - t0
        if not worker_up:
            t0 = time.monotonic()
            self._spawn(
                "worker",
                java,
                jars,
                WORKER_HEAP,
                "org.apache.kafka.connect.cli.ConnectDistributed",
            )
            started["worker"] = True
            self._wait_worker(deadline)
            self.ready_seconds["worker"] = time.monotonic() - t0
        return started

    def _choose_ports(self) -> dict[str, int]:
        s = self.settings
        ports = {
            "broker": s.kafka_port,
            "controller": s.kafka_controller_port,
            "connect": s.connect_port,
        }
        if len(set(ports.values())) != 3:
            raise ConfigError(
                "BANKDE_KAFKA_PORT, BANKDE_KAFKA_CONTROLLER_PORT and BANKDE_CONNECT_PORT must be "
                f"three different ports (got {ports['broker']}, {ports['controller']}, "
                f"{ports['connect']})"
            )
        return ports

    def _write_config(self, ports: dict[str, int], jars: Jars) -> None:
        self.conf.mkdir(parents=True, exist_ok=True)
        _write_private(
            self.conf / "server.properties",
            SERVER_PROPERTIES.format(
                port=ports["broker"], controller_port=ports["controller"], data=self.data
            ),
        )
        _write_private(
            self.conf / "worker.properties",
            WORKER_PROPERTIES.format(
                port=ports["broker"],
                connect_port=ports["connect"],
                group=CONNECT_GROUP,
                topics=CONNECT_TOPICS,
                plugin_path=jars.plugin_path,
                exactly_once="enabled" if self.settings.kafka_exactly_once else "disabled",
            ),
        )
        _write_private(self.conf / "log4j2.properties", LOG4J2)
        _write_private(self.state_file, json.dumps(ports))

    def _jvm(self, java: Path, jars: Jars, which: str, heap: str, log: str) -> list[str]:
        return [
            str(java),
            heap,
            "-Xms64m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dbankde.log.file={self.logs / log}",
            f"-Dlog4j2.configurationFile={self.conf / 'log4j2.properties'}",
            "-cp",
            jars.classpath(which),
        ]

    def _format(self, java: Path, jars: Jars) -> None:
        """Format the log directory once (KRaft needs a cluster id and the controller's voter set)."""
        if (self.data / "meta.properties").is_file():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        args = [
            *self._jvm(java, jars, "broker", "-Xmx256m", "storage-tool.log"),
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "--cluster-id",
            cluster_id,
            "--config",
            str(self.conf / "server.properties"),
        ]
        proc = subprocess.run(args, capture_output=True, text=True, cwd=str(self.home))
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise BankdeError(
                f"formatting the Kafka log directory {self.data} failed: "
                f"{detail[-1] if detail else proc.returncode}"
            )

    def _spawn(self, name: str, java: Path, jars: Jars, heap: str, main: str) -> None:
        which = "broker" if name == "broker" else "worker"
        log = f"{name}.log"
        args = [*self._jvm(java, jars, which, heap, log), main, self._marker(name)]
        out_path = self.logs / f"{name}.out"
        fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as out:
            # Its own session: Ctrl-C in the terminal that ran `kafka up` does not reach it.
            # The working directory is $BANKDE_HOME: the connector files' ${file:secrets/...}
            # placeholders resolve against it.
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(self.home),
                start_new_session=True,
            )
        _write_private(self._pid_file(name), f"{proc.pid}\n")

    def _died(self, name: str) -> BankdeError:
        return BankdeError(
            f"the Kafka {name} exited while starting: {last_error(self.logs / f'{name}.log')} "
            f"(log: {self.logs / f'{name}.log'})"
        )

    def _wait_broker(self, deadline: float) -> None:
        from bankde.kafka.admin import broker_ready

        while time.monotonic() < deadline:
            if not self.state("broker").running:
                raise self._died("broker")
            if broker_ready(self.bootstrap):
                return
            time.sleep(0.3)
        raise BankdeError(
            f"the Kafka broker did not become ready (log: {self.logs / 'broker.log'})"
        )

    def _wait_worker(self, deadline: float) -> None:
        # GET /connectors answers only once the worker has joined its group and read its configs.
        while time.monotonic() < deadline:
            if not self.state("worker").running:
                raise self._died("worker")
            try:
                rest_get(self.connect_url, "/connectors", timeout=2)
                return
            except (OSError, BankdeError):
                time.sleep(0.5)
        raise BankdeError(
            f"the Kafka Connect worker did not become ready (log: {self.logs / 'worker.log'})"
        )

    def down(self, timeout: float = 60.0) -> dict[str, bool]:
        """Stop the worker, then the broker (SIGTERM, SIGKILL after `timeout`); {name: stopped now}."""
        stopped = {}
        for name in ("worker", "broker"):
            pid = self._pid(name)
            stopped[name] = pid is not None
            if pid is not None:
                _terminate(pid, timeout)
            self._pid_file(name).unlink(missing_ok=True)
        return stopped


def _write_private(path: Path, text: str) -> None:
    """`path` swapped in whole, mode 0600 like every file under $BANKDE_HOME."""
    tmp = path.with_name(path.name + ".tmp")
    write_private(tmp, text.encode())
    tmp.replace(path)


def _terminate(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while _alive(pid):
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    # Our own children linger as zombies until reaped: reap them, and count a zombie as gone.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(") ", 1)[1].startswith("Z"):
                return False
    except (OSError, IndexError):
        return False
    return True


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def last_error(log: Path) -> str:
    """The last ERROR line of a log (or its last line), for one-line reports."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    errors = [ln for ln in lines if " ERROR " in ln or "Exception" in ln]
    pick = errors[-1] if errors else (lines[-1] if lines else "empty log")
    return pick.strip()[:400]


def rest_get(base: str, path: str, timeout: float = 10.0) -> Any:
    return rest(base, "GET", path, timeout=timeout)


def rest(base: str, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
    """One Connect REST call; the JSON answer, or a BankdeError with Connect's own message."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        base + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("message", "")
        except ValueError:
            message = ""
        raise BankdeError(
            f"Kafka Connect {method} {path}: HTTP {exc.code} {message}".strip()
        ) from None
    return json.loads(raw) if raw.strip() else None
