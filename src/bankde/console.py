"""Shared rich consoles: results on stdout, progress and diagnostics on stderr."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

out = Console()
err = Console(stderr=True)


def print_json(data: Any) -> None:
    """Plain JSON on stdout (no colour codes), for scripts."""
    print(json.dumps(data, indent=2, sort_keys=False, default=str))
