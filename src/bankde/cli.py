"""The `bankde` command: one entry point for every stage of the pipeline."""

from __future__ import annotations

import sys

import typer

from bankde.errors import BankdeError

app = typer.Typer(
    help="bankde: a bank's Postgres, CDC into ClickHouse, dbt marts. Run `make demo` to see it all.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_debug = False


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
    global _debug
    _debug = debug


def _register() -> None:
    from bankde.source.commands import app as db_app

    app.add_typer(db_app, name="db")
    # Later stages register themselves here as they land.
    for module in (
        "bankde.generator.commands",
        "bankde.cdc.commands",
        "bankde.kafka.commands",
        "bankde.warehouse.commands",
        "bankde.monitoring.commands",
        "bankde.transform.commands",
        "bankde.orchestration.commands",
    ):
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            raise
        mod.register(app)


_register()


def main() -> None:
    """Console-script entry: user errors become one line on stderr and an exit code."""
    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except BankdeError as exc:
        if _debug or "--debug" in sys.argv:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        # Newer typer vendors click as typer._click: its usage errors are not click's classes.
        usage_errors: tuple[type, ...] = (click.ClickException,)
        vendored = getattr(getattr(typer, "_click", None), "exceptions", None)
        if vendored is not None:
            usage_errors += (vendored.ClickException,)
        if isinstance(exc, usage_errors):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        raise


if __name__ == "__main__":
    main()
