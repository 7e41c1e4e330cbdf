"""pytest-xdist scheduling for `make pytest` (-n 2): what one worker must run together, kept together."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

# The session's one Kafka broker + Connect worker (fixture kafka_cluster): all its users in one
# worker. Benchmarks that start a broker and a Connect worker of their own run there too, never
# beside the session's.
KAFKA_GROUP = "kafka"
KAFKA_BENCHES = ("tests/integration/test_bench_smoke.py::test_benchmark_runs_at_tiny_size[kafka]",)
_WIDE_SCOPES = ("module", "class", "package")
# The controller's file the workers write their groups to (workerinput key).
_GROUPS_KEY = "bankde_xdist_groups"
_GROUPS_PATH = pytest.StashKey[Path]()


def group_of(item: pytest.Item) -> str | None:
    """The group `item` runs in (one worker runs a whole group), or None (scheduled alone)."""
    names = getattr(item, "fixturenames", ())
    if "kafka_cluster" in names or item.nodeid in KAFKA_BENCHES:
        return KAFKA_GROUP
    # A module fixture (a whole pipeline, the report a browser opens, a built JDBC client) is
    # built once, in the worker that runs every test of the module that uses it.
    info = getattr(item, "_fixtureinfo", None)
    if info is not None:
        for name in names:
            if any(d.scope in _WIDE_SCOPES for d in info.name2fixturedefs.get(name) or ()):
                return item.nodeid.split("::", 1)[0]
    return None


# Why not `--dist loadgroup` with xdist_group marks: under pytest 9.2 xdist 3.8 no longer gets
# the group into the node id and silently schedules every test alone (pytest-xdist#1386).
# Instead each worker writes nodeid -> group to a file of the controller's, and the scheduler
# below (xdist's module scheduler, its unit of work looked up there) reads it once every worker
# has collected.


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None):
        return
    config.stash[_GROUPS_PATH] = Path(tempfile.mkdtemp(prefix="bankde-xdist-")) / "groups.json"


def pytest_unconfigure(config: pytest.Config) -> None:
    path = config.stash.get(_GROUPS_PATH, None)
    if path is not None:
        shutil.rmtree(path.parent, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    node.workerinput[_GROUPS_KEY] = str(node.config.stash[_GROUPS_PATH])


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    target = getattr(config, "workerinput", {}).get(_GROUPS_KEY)
    if target is None:
        return
    groups = {item.nodeid: g for item in items if (g := group_of(item)) is not None}
    # Every worker collects the same tests: each writes the whole map, renamed into place.
    tmp = f"{target}.{os.getpid()}"
    Path(tmp).write_text(json.dumps(groups))
    os.replace(tmp, target)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    path = config.stash[_GROUPS_PATH]

    class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
        """Units of work: a group's tests together, every other test alone; the biggest
        units first (xdist's loadscope reorder), so the long Kafka group starts at once."""

        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # called once every worker has collected
                self.groups = json.loads(path.read_text())
            return self.groups.get(nodeid, nodeid)

    return GroupScheduling(config, log)
