"""Java and Maven prerequisites, and the broker, worker and plugin jars resolved from Maven Central."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from bankde.errors import BankdeError, ConfigError

MIN_JAVA = 17
# Each classpath and the committed pom that lists it (src/bankde/kafka/poms/).
POMS = ("broker", "worker", "plugin")
PLUGIN_DIR_NAME = "debezium-connector-postgres"


@dataclass(frozen=True)
class Jars:
    """Where the resolved jars are: the broker's and the worker's classpaths, the plugin path."""

    broker: Path
    worker: Path
    plugin_path: Path

    def classpath(self, which: str) -> str:
        return str((self.broker if which == "broker" else self.worker) / "*")


def find_java() -> Path:
    """`java` (17 or newer) from JAVA_HOME or PATH; a ConfigError naming what to install."""
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home) / "bin" / "java" if home else None
    if candidate is None or not candidate.is_file():
        found = shutil.which("java")
        candidate = Path(found) if found else None
    if candidate is None:
        raise ConfigError(
            "Java not found (no `java` on PATH or in JAVA_HOME): install Java 17 or newer, "
            "e.g. apt-get install openjdk-17-jre-headless"
        )
    major = _java_major(candidate)
    if major < MIN_JAVA:
        raise ConfigError(
            f"{candidate} is Java {major or 'of unknown version'}; Kafka needs Java {MIN_JAVA} or "
            "newer: install openjdk-17-jre-headless (or newer) and put it first on PATH"
        )
    return candidate


def _java_major(java: Path) -> int:
    try:
        proc = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    # 'openjdk version "17.0.15" 2025-04-15' (or "1.8.0_402" for Java 8) on stderr.
    m = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if not m:
        return 0
    first = int(m.group(1))
    return int(m.group(2) or 0) if first == 1 else first


def find_maven() -> Path:
    found = shutil.which("mvn")
    if not found:
        raise ConfigError(
            "Maven not found (no `mvn` on PATH): it fetches the Kafka jars from Maven Central "
            "once; install it, e.g. apt-get install maven"
        )
    return Path(found)


def pom(name: str) -> Path:
    return Path(str(resources.files("bankde.kafka") / "poms" / f"{name}.xml"))


def _digest() -> str:
    h = hashlib.sha256()
    for name in POMS:
        h.update(pom(name).read_bytes())
    return h.hexdigest()[:16]


def default_cache() -> Path:
    """Where the jars are kept for every bankde home of this user (a cache, like ~/.m2)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bankde" / "kafka-jars"


def resolve(cache: Path, log: Path) -> Jars:
    """The jars under `cache`/<poms' digest>, copied there by Maven on first use.

    One process at a time resolves (a lock file); each set is copied into a temporary directory
    and renamed into place, and the stamp is written last, so an interrupted download leaves
    nothing that looks complete."""
    lib = cache / _digest()
    stamp = lib / ".resolved"
    jars = Jars(lib / "broker", lib / "worker", lib / "plugins")
    if stamp.is_file():
        return jars
    mvn = find_maven()
    find_java()  # Maven runs on it too; say so before a long download fails obscurely
    lib.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.is_file():  # another process may have finished it while we waited
            for name in POMS:
                _copy(mvn, name, lib, jars, log)
            stamp.touch()
    return jars


def _copy(mvn: Path, name: str, lib: Path, jars: Jars, log: Path) -> None:
    tmp = lib / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        proc = subprocess.run(
            [
                str(mvn),
                "-B",
                "-q",
                "-f",
                str(pom(name)),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={tmp}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(lib),
        )
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BankdeError(f"Maven could not fetch the {name} jars from Maven Central (log: {log})")
    final = jars.plugin_path / PLUGIN_DIR_NAME if name == "plugin" else lib / name
    shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(final)
