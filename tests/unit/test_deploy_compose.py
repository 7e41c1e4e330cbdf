"""deploy/compose.yaml, checked without Docker: files exist, no literal secret, loopback ports, same connector files."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from bankde.kafka.connect import connector_files

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
SECRET_WORDS = re.compile(r"password|secret|token|credential", re.IGNORECASE)
# Images published by the projects themselves (Docker official images or the vendor's own).
OFFICIAL = ("postgres:", "apache/kafka:", "quay.io/debezium/connect:",
            "clickhouse/clickhouse-server:", "apache/airflow:", "curlimages/curl:")  # fmt: skip


def _doc() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _host_paths() -> list[tuple[str, Path]]:
    """(service, host path) of every bind mount, env file and secret file."""
    doc = _doc()
    out = []
    for name, svc in doc["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith((".", "/")):
                out.append((name, (DEPLOY / src).resolve()))
        for env_file in svc.get("env_file", []):
            out.append((name, (DEPLOY / env_file).resolve()))
    for name, sec in doc.get("secrets", {}).items():
        out.append((name, (DEPLOY / sec["file"]).resolve()))
    return out


def _ignored(path: Path) -> bool:
    proc = subprocess.run(
        ["git", "check-ignore", "-q", str(path)], cwd=REPO, capture_output=True, check=False
    )
    return proc.returncode == 0


def test_every_referenced_file_exists_or_is_a_private_file_with_an_example() -> None:
    paths = _host_paths()
    assert paths
    for owner, path in paths:
        if path.exists():
            continue
        # Secrets and env files are the user's own: git-ignored, described or with an example.
        assert _ignored(path), f"{owner}: {path} missing and not git-ignored"
        example = path.with_name(path.name + ".example")
        readme = (DEPLOY / "README.md").read_text()
        assert example.is_file() or path.name in readme, f"{owner}: {path} undocumented"
    wired = {p for _, p in paths}
    for d in ("debezium", "clickhouse_init", "dbt", "airflow/dags"):
        assert (REPO / d).resolve() in wired, f"{d} is not wired into compose.yaml"


def test_no_literal_secret() -> None:
    doc = _doc()
    for name, svc in doc["services"].items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        for key, value in env.items():
            if SECRET_WORDS.search(key):
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), (
                    f"{name}: {key} must come from a secret file"
                )
    text = COMPOSE.read_text()
    assert not re.search(r"(?i)password[ \t]*[:=][ \t]*['\"]?\w", text.replace("PASSWORD_FILE", ""))
    for example in DEPLOY.glob("*.example"):
        for line in example.read_text().splitlines():
            key, _, value = line.partition("=")
            if SECRET_WORDS.search(key) and not line.startswith("#"):
                assert value == "", f"{example.name}: {key} holds a value"


def test_ports_bound_to_loopback_only() -> None:
    ports = [(n, p) for n, s in _doc()["services"].items() for p in s.get("ports", [])]
    assert ports
    for name, port in ports:
        assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is not bound to 127.0.0.1"


def test_official_images() -> None:
    for name, svc in _doc()["services"].items():
        assert svc["image"].startswith(OFFICIAL), f"{name}: {svc['image']}"


def test_registers_the_connector_files_the_tests_register() -> None:
    svc = _doc()["services"]["connect-register"]
    mount = next(v for v in svc["volumes"] if v.split(":")[1] == "/debezium")
    assert (DEPLOY / mount.split(":")[0]).resolve() == connector_files()[0].path.parent
    assert "/debezium/postgres-*.json" in " ".join(svc["command"])
    # The worker resolves the files' ${file:secrets/...} placeholders from its working directory.
    connect = _doc()["services"]["connect"]
    target = connect["secrets"][0]["target"]
    placeholder = connector_files()[0].config["database.password"]
    relative = re.match(r"\$\{file:([^:]+):", placeholder)
    assert relative and target == f"{connect['working_dir']}/{relative.group(1)}"


def test_capture_init_creates_the_connectors_publications() -> None:
    script = (DEPLOY / "postgres" / "20_capture.sh").read_text()
    made = {
        m.group(1): {t.strip() for t in m.group(2).split(",")}
        for m in re.finditer(r"CREATE PUBLICATION (\w+) FOR TABLE ([^;]+);", script)
    }
    want = {
        f.config["publication.name"]: {f"{s}.{t}" for s, t in f.tables} for f in connector_files()
    }
    assert made == want
