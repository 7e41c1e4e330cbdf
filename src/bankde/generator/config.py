"""Filler configuration from flags and environment, validated before anything is written."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

from bankde.errors import ConfigError


@dataclass(frozen=True)
class FillConfig:
    """What one `bankde fill` generates. Counts are per run; close rates are shares of the active
    entities closed over the run's time span (per hour in --live mode)."""

    n_new_txns: int = 10_000
    backfill_days: int = 0
    backfill_txns_per_day: int = 10_000
    fraud_share: float = 0.02
    seed: int | None = None
    as_of: datetime | None = None
    customers: int = 1_000
    terminals: int = 400
    card_close_rate: float = 0.02
    account_close_rate: float = 0.01
    customer_close_rate: float = 0.005
    terminal_close_rate: float = 0.01
    batch_size: int = 100_000
    # Length of the "current" window that N_NEW_TXNS fill, ending at as_of.
    window_hours: float = 24.0

    @property
    def total_txns(self) -> int:
        return self.n_new_txns + self.backfill_days * self.backfill_txns_per_day


# field -> (environment variable, kind, lower bound, upper bound). The four original filler
# variables keep their unprefixed names.
_SPEC: dict[str, tuple[str, str, float | None, float | None]] = {
    "n_new_txns": ("N_NEW_TXNS", "int", 0, None),
    "backfill_days": ("BACKFILL_DAYS", "int", 0, 36_500),
    "backfill_txns_per_day": ("BACKFILL_TXNS_PER_DAY", "int", 0, None),
    "fraud_share": ("FRAUD_SHARE", "float", 0.0, 1.0),
    "seed": ("BANKDE_SEED", "int", 0, 2**63 - 1),
    "as_of": ("BANKDE_AS_OF", "datetime", None, None),
    "customers": ("BANKDE_FILL_CUSTOMERS", "int", 0, 10_000_000),
    "terminals": ("BANKDE_FILL_TERMINALS", "int", 0, 1_000_000),
    "card_close_rate": ("BANKDE_FILL_CARD_CLOSE_RATE", "float", 0.0, 1.0),
    "account_close_rate": ("BANKDE_FILL_ACCOUNT_CLOSE_RATE", "float", 0.0, 1.0),
    "customer_close_rate": ("BANKDE_FILL_CUSTOMER_CLOSE_RATE", "float", 0.0, 1.0),
    "terminal_close_rate": ("BANKDE_FILL_TERMINAL_CLOSE_RATE", "float", 0.0, 1.0),
    "batch_size": ("BANKDE_FILL_BATCH_SIZE", "int", 1_000, 5_000_000),
    "window_hours": ("BANKDE_FILL_WINDOW_HOURS", "float", 0.01, 24.0 * 366),
}


def env_name(field: str) -> str:
    return _SPEC[field][0]


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _range_text(kind: str, lo: float | None, hi: float | None) -> str:
    noun = {"int": "an integer", "float": "a number", "datetime": "an ISO-8601 timestamp"}[kind]
    if lo is not None and hi is not None:
        return f"{noun} in [{lo:g}, {hi:g}]"
    if lo is not None:
        return f"{noun} >= {lo:g}"
    return noun


def parse_as_of(raw: str) -> datetime:
    """ISO-8601 timestamp; naive means UTC."""
    dt = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _coerce(field: str, value: Any, label: str) -> Any:
    _, kind, lo, hi = _SPEC[field]
    bad = f"{label}={value!s}: must be {_range_text(kind, lo, hi)}"
    try:
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            parsed: Any = int(str(value).strip()) if isinstance(value, str) else int(value)
        elif kind == "float":
            parsed = float(str(value).strip()) if isinstance(value, str) else float(value)
            if parsed != parsed:  # NaN
                raise ValueError
        else:
            parsed = parse_as_of(value) if isinstance(value, str) else value
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed
    except (TypeError, ValueError):
        raise ConfigError(bad) from None
    if (lo is not None and parsed < lo) or (hi is not None and parsed > hi):
        raise ConfigError(bad)
    return parsed


def load_fill_config(
    flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> FillConfig:
    """Flags win over environment variables, which win over defaults. Raises ConfigError naming
    the flag or variable and its allowed range on the first bad value."""
    flags = flags or {}
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(FillConfig):
        name = f.name
        if flags.get(name) is not None:
            values[name] = _coerce(name, flags[name], flag_name(name))
        elif (raw := environ.get(env_name(name))) not in (None, ""):
            values[name] = _coerce(name, raw, env_name(name))
    unknown = set(flags) - {f.name for f in fields(FillConfig)}
    if unknown:
        raise ConfigError(f"unknown filler option(s): {', '.join(sorted(unknown))}")
    return validate(FillConfig(**values))


def validate(config: FillConfig) -> FillConfig:
    """Re-check a config built in code (library callers skip the parsing above)."""
    for f in fields(FillConfig):
        value = getattr(config, f.name)
        if value is not None:
            _coerce(f.name, value, flag_name(f.name))
    return config


def resolve(config: FillConfig) -> FillConfig:
    """Pin the run: a concrete seed and as_of (both reported in the summary for replay)."""
    seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(4), "big")
    as_of = config.as_of or datetime.now(UTC)
    return replace(config, seed=seed, as_of=as_of.astimezone(UTC))
