"""`bankde kafka ...`: the managed Kafka broker and Connect worker, and the repo's connectors on it."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from bankde.console import out, print_json
from bankde.errors import BankdeError
from bankde.settings import get_settings

app = typer.Typer(
    help="Managed Kafka (KRaft broker + Connect worker with Debezium) under $BANKDE_HOME/kafka.",
    no_args_is_help=True,
)


@app.command()
def up() -> None:
    """Start the broker and the Connect worker (first time: fetch the jars with Maven)."""
    from bankde.kafka.cluster import ManagedKafka

    kafka = ManagedKafka(get_settings())
    started = kafka.up()
    for name, where in (("broker", kafka.bootstrap), ("worker", kafka.connect_url)):
        if started[name]:
            took = kafka.ready_seconds.get(name)
            ready = f" (ready in {took:.1f} s)" if took is not None else ""
            out.print(f"Kafka {name} started on {where}{ready}")
        else:
            out.print(f"Kafka {name} already running on {where}")
    out.print(f"logs: {kafka.logs}")


@app.command()
def down() -> None:
    """Stop the worker and the broker that `kafka up` started (topics and offsets are kept)."""
    from bankde.kafka.cluster import ManagedKafka

    stopped = ManagedKafka(get_settings()).down()
    for name in ("worker", "broker"):
        out.print(f"Kafka {name} {'stopped' if stopped[name] else 'was not running'}")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Broker, worker, connectors and their tasks, topics' end offsets, consumer groups' lag."""
    from bankde.kafka.status import gather

    report = gather(get_settings())
    if as_json:
        print_json(report)
        return
    _print_status(report)


def _print_status(r: dict[str, Any]) -> None:
    for name in ("broker", "worker"):
        p = r[name]
        state = f"running (pid {p['pid']})" if p["running"] else "stopped"
        out.print(f"{name:<8} {state} on {p['address']}")
    if r.get("connectors") is not None:
        t = Table(title="Connectors")
        for col in ("connector", "state", "tasks"):
            t.add_column(col)
        errors = []
        for c in r["connectors"]:
            tasks = ", ".join(f"{task['id']} {task['state']}" for task in c["tasks"]) or "-"
            t.add_row(c["name"], c["state"], tasks)
            if c["error"]:
                errors.append(f"{c['name']}: {c['error']}")
            errors += [
                f"{c['name']} task {x['id']}: {x['error']}" for x in c["tasks"] if x["error"]
            ]
        out.print(t)
        for line in errors:
            # Printed whole, never cut to the table's width: it is what the user must read.
            out.print(f"[red]{line}[/red]", soft_wrap=True, highlight=False)
    if r.get("topics") is not None:
        t = Table(title="Topics (end offsets, committed)")
        t.add_column("topic")
        t.add_column("partitions", justify="right")
        t.add_column("end offset", justify="right")
        for tp in r["topics"]:
            t.add_row(tp["topic"], str(tp["partitions"]), f"{tp['end_offset']:,}")
        out.print(t)
    if r.get("groups") is not None:
        engine = r["engine_group"]
        if not any(g["group"] == engine for g in r["groups"]):
            out.print(f"consumer group {engine} (the kafka engine's): no committed offsets yet")
        if r["groups"]:
            t = Table(title="Consumer groups")
            for col in ("group", "topic", "partition", "committed", "end", "lag"):
                t.add_column(col, justify="right" if col not in ("group", "topic") else "left")
            for g in r["groups"]:
                t.add_row(
                    g["group"], g["topic"], str(g["partition"]),
                    "-" if g["committed"] is None else f"{g['committed']:,}",
                    f"{g['end_offset']:,}", f"{g['lag']:,}",
                )  # fmt: skip
            out.print(t)
    for line in r.get("errors", []):
        out.print(f"[red]{line}[/red]")


@app.command("connect")
def connect_cmd(
    wait: float = typer.Option(
        120.0, "--wait", help="Seconds to wait for every connector task to run (0: do not wait)."
    ),
) -> None:
    """Register debezium/*.json (unchanged) on the worker; the source's address and the capture
    role's credentials go to $BANKDE_HOME/secrets/bankde-source.properties (0600)."""
    from bankde.kafka.cluster import ManagedKafka
    from bankde.kafka.connect import connector_files, register, wait_running

    settings = get_settings()
    kafka = ManagedKafka(settings)
    if not kafka.state("worker").running:
        raise BankdeError("the Kafka Connect worker is not running: run `bankde kafka up` first")
    files = connector_files()
    restarted = register(settings, kafka.connect_url, files)
    out.print(f"registered {len(files)} connectors on {kafka.connect_url}")
    for name in sorted(restarted):
        out.print(f"{name}: had failed, restarted")
    if wait > 0:
        for s in wait_running(kafka.connect_url, [f.name for f in files], wait, restarted):
            out.print(f"{s.name}: {s.state}, {len(s.tasks)} task(s) running")


@app.command()
def disconnect(
    keep_slots: bool = typer.Option(False, "--keep-slots", help="Keep the replication slots."),
    topics: bool = typer.Option(
        False, "--topics", help="Also delete the connectors' topics (bankde.*, heartbeats)."
    ),
) -> None:
    """Remove the repo's connectors with their stored offsets (and, unless told, their slots)."""
    from bankde.kafka.admin import delete_topics
    from bankde.kafka.cluster import ManagedKafka
    from bankde.kafka.connect import connector_files, remove

    settings = get_settings()
    kafka = ManagedKafka(settings)
    if not kafka.state("worker").running:
        raise BankdeError("the Kafka Connect worker is not running: run `bankde kafka up` first")
    removed = remove(settings, kafka.connect_url, connector_files(), drop_slots=not keep_slots)
    out.print(f"removed {len(removed)} connectors" + ("" if keep_slots else " and their slots"))
    if topics:
        gone = delete_topics(kafka.bootstrap, ("bankde.", "__debezium-heartbeat.bankde"))
        out.print(f"deleted {len(gone)} topics")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="kafka")
