"""The `--wait` option of every command that opens the embedded warehouse, defined once."""

from __future__ import annotations

from typing import Annotated

import typer

from bankde.settings import Settings, get_settings

WaitOption = Annotated[
    float | None,
    typer.Option(
        "--wait",
        min=0,
        help="Seconds to wait for another process holding the embedded warehouse, then exit "
        "naming it (default BANKDE_WH_LOCK_WAIT).",
    ),
]


def settings_with_wait(wait: float | None) -> Settings:
    """The settings, with `--wait` (when given) as the lock wait of every warehouse opened."""
    settings = get_settings()
    return settings if wait is None else settings.model_copy(update={"wh_lock_wait": wait})
