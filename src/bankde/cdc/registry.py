"""The capture-engine registry: the one place an engine name maps to everything that runs it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bankde.errors import CaptureError, ConfigError
from bankde.settings import Settings

if TYPE_CHECKING:
    from bankde.contracts import CaptureEngine


def _same_settings(settings: Settings) -> Settings:
    return settings


@dataclass(frozen=True)
class EngineSpec:
    """One capture engine as the CLI, the capture loop, status, resync, Airflow and bench see it.

    `module` defines `Engine` (a CaptureEngine built from the settings `settings_for` returns)
    and is imported only when the engine runs, so an engine whose optional extra is missing
    costs nothing until asked for. `settings_for` names the engine's own slot, publication and
    offset row: status, resync and capture all use it, so two engines never share a slot.
    """

    name: str
    summary: str  # what the CLI's help says of it, after the name
    module: str
    extra: str | None = None
    settings_for: Callable[[Settings], Settings] = _same_settings
    # The engine's own part of `cdc status` (base settings, the warehouse or None): a dict
    # printed under the engine's name; a "problem" in it makes the command exit 1.
    status: Callable[[Settings, Any], dict[str, Any]] | None = None

    def engine_class(self) -> Callable[[Settings], CaptureEngine]:
        """The engine's class; CaptureError naming the extra when its dependencies are missing."""
        try:
            mod = importlib.import_module(self.module)
        except ModuleNotFoundError as exc:
            if self.extra is None or (exc.name or "").startswith("bankde"):
                raise
            raise CaptureError(
                f"the {self.name} engine is not available ({exc.name} missing): "
                f"pip install 'bankde[{self.extra}]'"
            ) from None
        factory: Callable[[Settings], CaptureEngine] = mod.Engine
        return factory

    def create(self, settings: Settings) -> CaptureEngine:
        """A new engine on `settings` (the base settings: the engine applies settings_for)."""
        return self.engine_class()(self.settings_for(settings))


def _debezium_settings(settings: Settings) -> Settings:
    from bankde.cdc.engines.debezium.config import engine_settings

    return engine_settings(settings)


def _kafka_settings(settings: Settings) -> Settings:
    from bankde.cdc.engines.kafka_names import engine_settings

    return engine_settings(settings)


def _kafka_status(settings: Settings, warehouse: Any) -> dict[str, Any]:
    from bankde.cdc.engines.kafka import kafka_status

    return kafka_status(settings, warehouse)


# Adding an engine: one module defining `Engine`, and one entry here (see docs/cdc.md).
ENGINES: dict[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec("native", "pgoutput, default", "bankde.cdc.native"),
        EngineSpec(
            "debezium",
            "extra \\[debezium]",
            "bankde.cdc.engines.debezium.engine",
            extra="debezium",
            settings_for=_debezium_settings,
        ),
        EngineSpec(
            "kafka",
            "Debezium topics on Kafka, extra \\[kafka]",
            "bankde.cdc.engines.kafka",
            extra="kafka",
            settings_for=_kafka_settings,
            status=_kafka_status,
        ),
    )
}
DEFAULT_ENGINE = "native"


def engine_names() -> list[str]:
    return list(ENGINES)


def get_engine(name: str) -> EngineSpec:
    """The registered engine `name`; ConfigError (exit 2) listing the choices otherwise."""
    spec = ENGINES.get(name)
    if spec is None:
        raise ConfigError(
            f"unknown capture engine {name!r}: use --engine {' or '.join(engine_names())}"
        )
    return spec


def engine_help() -> str:
    """The CLI's --engine help, listing every registered engine."""
    choices = [f"{s.name} ({s.summary})" for s in ENGINES.values()]
    listed = ", ".join(choices[:-1]) + " or " + choices[-1] if len(choices) > 1 else choices[0]
    return f"Capture engine: {listed}."


def make_engine(settings: Settings, engine: str = DEFAULT_ENGINE) -> CaptureEngine:
    """A new engine by name on the base settings (it runs under its own settings_for)."""
    return get_engine(engine).create(settings)
