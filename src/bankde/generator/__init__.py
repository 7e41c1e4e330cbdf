"""The event filler: entities, transactions with backfill, logical closes and labelled fraud."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bankde.generator.config import FillConfig, load_fill_config
    from bankde.generator.runner import FillSummary, fill, run_live

__all__ = ["FillConfig", "FillSummary", "fill", "load_fill_config", "run_live"]


def __getattr__(name: str) -> Any:
    # Lazy: `bankde --help` imports this package and must not pay for numpy and Faker.
    if name in ("FillConfig", "load_fill_config"):
        from bankde.generator import config

        return getattr(config, name)
    if name in ("FillSummary", "fill", "run_live"):
        from bankde.generator import runner

        return getattr(runner, name)
    raise AttributeError(name)
