"""The Starlette application: ClickHouse's HTTP interface (`/`, `/ping`) over the chDB engine."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from bankde.warehouse.server import codecs
from bankde.warehouse.server.engine import Engine, Handle, leaves_state
from bankde.warehouse.server.protocol import (
    NOT_IMPLEMENTED,
    READONLY,
    STREAMABLE_FORMATS,
    ClickHouseError,
    RequestParams,
    content_type,
    engine_error,
    first_keyword,
    infile_insert,
    split_inline_data,
    trailing_format,
)
from bankde.warehouse.server.users import Authenticator, User

# Statements with a result set (the server then names the format in X-ClickHouse-Format).
_RESULT_KEYWORDS = frozenset(
    {"SELECT", "WITH", "SHOW", "DESC", "DESCRIBE", "EXISTS", "EXPLAIN", "CHECK", "VALUES"}
)
# chDB streams only these (send_query refuses DESCRIBE, SHOW, …): the rest is sent in one piece.
_STREAM_KEYWORDS = frozenset({"SELECT", "WITH"})
# What a GET may run: ClickHouse treats GET as readonly (modifying queries need POST).
_GET_KEYWORDS = _RESULT_KEYWORDS | {"SET", "USE"}
MAX_QUERY_BYTES = 64 * 1024**2
_SPOOL_FLUSH = 1024**2
_CHUNK = 1024**2


@dataclass(frozen=True)
class ServerInfo:
    version: str
    timezone: str
    display_name: str
    spool_dir: Path


@dataclass
class _Request:
    user: User
    params: RequestParams
    query_id: str
    encoding: str | None
    # compress=1 / decompress=1: ClickHouse's own compressed blocks (JDBC's default).
    native_out: bool = False
    native_in: bool = False

    def decoder(self, request: Request) -> codecs.Codec | None:
        return codecs.request_decoder(request.headers.get("content-encoding", ""), self.native_in)

    def encoder(self) -> codecs.Codec | None:
        return codecs.response_encoder(self.encoding, self.native_out)


def create_app(engine: Engine, auth: Authenticator, info: ServerInfo) -> Starlette:
    """The ASGI app. `engine` and `auth` are shared by every request (both are thread-safe)."""

    async def ping(request: Request) -> Response:
        return PlainTextResponse("Ok.\n")

    async def root(request: Request) -> Response:
        started = time.perf_counter()
        query_id = request.query_params.get("query_id") or str(uuid.uuid4())
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": info.timezone,
            "X-ClickHouse-Server-Display-Name": info.display_name,
        }
        if request.method == "GET" and not request.query_params.get("query"):
            return PlainTextResponse("Ok.\n", headers=headers)
        try:
            req = _prepare(request, auth, query_id)
            return await _execute(request, req, engine, info, headers, started)
        except ClickHouseError as exc:
            return _error(exc, info, headers)

    return Starlette(
        routes=[
            Route("/", root, methods=["GET", "POST"]),
            Route("/ping", ping, methods=["GET", "HEAD"]),
        ]
    )


def _error(exc: ClickHouseError, info: ServerInfo, headers: dict[str, str]) -> Response:
    return Response(
        exc.body(info.version),
        status_code=exc.http_status,
        media_type="text/plain; charset=UTF-8",
        headers={**headers, "X-ClickHouse-Exception-Code": str(exc.code)},
    )


def _prepare(request: Request, auth: Authenticator, query_id: str) -> _Request:
    query_params = dict(request.query_params)
    user = auth.authenticate(request.headers, query_params)
    params = RequestParams.parse(query_params)
    # The HTTP interface also takes the database and the default format as request headers.
    database = request.headers.get("x-clickhouse-database")
    if database and "database" not in params.transport:
        params.transport["database"] = database
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ClickHouseError(
            NOT_IMPLEMENTED,
            "external data and query parameters sent as multipart/form-data are not supported by "
            "bankde's server; send the query in the URL or the body, parameters as param_<name>",
            "NOT_IMPLEMENTED",
        )
    encoding = None
    if params.flag("enable_http_compression"):
        encoding = codecs.choose(request.headers.get("accept-encoding", ""))
    return _Request(
        user, params, query_id, encoding, params.flag("compress"), params.flag("decompress")
    )


async def _read_statement(
    request: Request, req: _Request, spool_dir: Path
) -> tuple[bytes, str | None]:
    """A body that is the statement: (statement, None); or an INSERT followed by its data
    (`INSERT … FORMAT Native\n<data>`, as clickhouse-connect sends it): (statement, spooled data)."""
    dec = req.decoder(request)
    buffer = b""
    chunks = request.stream()
    async for chunk in chunks:
        buffer += dec.feed(chunk) if dec is not None else chunk
        if len(buffer) > MAX_QUERY_BYTES:
            break
        # latin-1 maps byte offsets to character offsets one to one.
        inline = split_inline_data(buffer[: 64 * 1024].decode("latin-1"))
        if inline is not None:
            statement, offset = inline
            path = await _spool(request, req, spool_dir, buffer[offset:], dec, chunks)
            return statement.encode("latin-1"), path
    if len(buffer) > MAX_QUERY_BYTES:
        raise ClickHouseError(
            62, f"Query is too large: more than max_query_size ({MAX_QUERY_BYTES} bytes)"
        )
    if dec is not None:
        buffer += dec.flush()
    return buffer, None


async def _spool(
    request: Request,
    req: _Request,
    spool_dir: Path,
    head: bytes = b"",
    dec: codecs.Codec | None = None,
    chunks: AsyncIterator[bytes] | None = None,
) -> str:
    """The request body (decompressed) in a new 0600 file; removed again if the body breaks off:
    the INSERT then never runs, so an insert is all or nothing."""
    if chunks is None:
        dec = req.decoder(request)
        chunks = request.stream()
    fd, path = tempfile.mkstemp(dir=spool_dir, prefix="insert-")
    try:
        with os.fdopen(fd, "wb") as f:
            pending: list[bytes] = [head] if head else []
            size = len(head)
            async for chunk in chunks:
                pending.append(dec.feed(chunk) if dec is not None else chunk)
                size += len(pending[-1])
                if size >= _SPOOL_FLUSH:
                    data = b"".join(pending)
                    await run_in_threadpool(f.write, data)
                    pending, size = [], 0
            if dec is not None:
                pending.append(dec.flush())
            await run_in_threadpool(f.write, b"".join(pending))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return path


async def _execute(
    request: Request,
    req: _Request,
    engine: Engine,
    info: ServerInfo,
    headers: dict[str, str],
    started: float,
) -> Response:
    url_query = req.params.transport.get("query")
    data_path: str | None = None
    try:
        if (
            url_query is not None
            and request.method == "POST"
            and first_keyword(url_query) == "INSERT"
        ):
            sql = url_query
            # An INSERT whose data is the body; with no body the statement carries its VALUES.
            if trailing_format(sql) is not None or request.headers.get("content-length") != "0":
                data_path = await _spool(request, req, info.spool_dir)
                if trailing_format(sql) is None and os.path.getsize(data_path) == 0:
                    os.unlink(data_path)
                    data_path = None
        elif request.method == "POST":
            body, data_path = await _read_statement(request, req, info.spool_dir)
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise ClickHouseError(62, "the query is not valid UTF-8", "SYNTAX_ERROR") from None
            sql = f"{url_query}\n{text}" if url_query is not None and text else url_query or text
        else:
            sql = url_query or ""
        if not sql.strip():
            raise ClickHouseError(62, "Empty query", "SYNTAX_ERROR")
        keyword = first_keyword(sql)
        if request.method == "GET" and keyword not in _GET_KEYWORDS:
            raise ClickHouseError(
                READONLY,
                "Cannot execute query in readonly mode. For queries over HTTP, method GET "
                "implies readonly. You should use method POST for modifying queries",
                "READONLY",
            )
        if data_path is not None:
            sql = infile_insert(sql, data_path)
    except ClientDisconnect:
        if data_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(data_path)
        return Response(status_code=400)
    except BaseException:
        if data_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(data_path)
        raise

    fmt = (
        trailing_format(sql)
        or req.params.transport.get("default_format")
        or request.headers.get("x-clickhouse-format")
        or "TabSeparated"
    )
    has_result = keyword in _RESULT_KEYWORDS and data_path is None
    run = _Run(engine, req, sql, fmt, data_path)
    if has_result and keyword in _STREAM_KEYWORDS and fmt in STREAMABLE_FORMATS:
        first = await run_in_threadpool(run.open_stream)
        return _respond_stream(run, first, req, info, headers, fmt)
    try:
        result = await run_in_threadpool(run.once)
    finally:
        if data_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(data_path)
    summary = _summary(result, started, insert=data_path is not None or keyword == "INSERT")
    out = {**headers, "X-ClickHouse-Summary": json.dumps(summary)}
    if has_result:
        out["X-ClickHouse-Format"] = fmt
    view = result.get_memview().view() if result is not None else memoryview(b"")
    codec = req.encoder()
    if codec is None:
        return Response(bytes(view), media_type=content_type(fmt), headers=out)
    if req.encoding:
        out["Content-Encoding"] = req.encoding

    def compressed() -> Iterator[bytes]:
        assert codec is not None
        for i in range(0, len(view), _CHUNK):
            piece = codec.feed(bytes(view[i : i + _CHUNK]))
            if piece:
                yield piece
        yield codec.flush()
        result.get_memview()  # keep the engine's buffer alive until the last slice is sent

    return StreamingResponse(compressed(), media_type=content_type(fmt), headers=out)


def _respond_stream(
    run: _Run, first: bytes, req: _Request, info: ServerInfo, headers: dict[str, str], fmt: str
) -> Response:
    out = {**headers, "X-ClickHouse-Format": fmt, "X-ClickHouse-Summary": json.dumps({})}
    codec = req.encoder()
    if req.encoding:
        out["Content-Encoding"] = req.encoding

    async def body() -> AsyncIterator[bytes]:
        try:
            chunk: bytes | None = first
            while chunk is not None:
                if codec is None:
                    yield chunk
                else:
                    piece = codec.feed(chunk)
                    if piece:
                        yield piece
                chunk = await run_in_threadpool(run.next_chunk)
            if codec is not None:
                yield codec.flush()
        finally:
            await run_in_threadpool(run.finish)

    return StreamingResponse(body(), media_type=content_type(fmt), headers=out)


class _Run:
    """One statement on one checked-out handle: settings applied before, restored after."""

    def __init__(
        self, engine: Engine, req: _Request, sql: str, fmt: str, data_path: str | None
    ) -> None:
        self.engine = engine
        self.req = req
        self.sql = sql
        self.fmt = fmt
        self.data_path = data_path
        self._stack = contextlib.ExitStack()
        self._stream: Any = None
        self._iter: Any = None

    def _checkout(self) -> Handle:
        t = self.req.params.transport
        session_id = t.get("session_id") or None
        try:
            timeout = float(t.get("session_timeout", "60"))
        except ValueError:
            raise ClickHouseError(
                36, f"Invalid session timeout: '{t['session_timeout']}'", "BAD_ARGUMENTS"
            ) from None
        handle = self._stack.enter_context(
            self.engine.checkout(
                self.req.user, session_id, timeout, self.req.params.flag("session_check")
            )
        )
        if session_id is None and leaves_state(self.sql):
            handle.tainted = True
        database = t.get("database")
        if session_id is None or database:
            handle.use(database)
        if session_id is None:
            handle.switch_settings(self.req.params.settings)
        else:
            # A session's own SETs must survive the request's settings: put back what was.
            snapshot = handle.apply_settings(self.req.params.settings)
            self._stack.callback(handle.restore_settings, snapshot)
        return handle

    def once(self) -> Any:
        with self._stack:
            handle = self._checkout()
            with self.engine.admit(self.req.user):
                result = handle.query(self.sql, self.fmt, self.req.params.query_params)
            if first_keyword(self.sql) == "USE":
                handle.database = (
                    handle.query("SELECT currentDatabase()", "TabSeparated")
                    .bytes()
                    .decode()
                    .strip()
                )
            return result

    def open_stream(self) -> bytes:
        try:
            handle = self._checkout()
            with self.engine.admit(self.req.user):
                self._stream = handle.send_query(self.sql, self.fmt, self.req.params.query_params)
            self._iter = iter(self._stream)
            first = self.next_chunk()
        except BaseException:
            self.finish()
            raise
        return first if first is not None else b""

    def next_chunk(self) -> bytes | None:
        try:
            with self.engine.admit(self.req.user):
                chunk = next(self._iter)
        except StopIteration:
            return None
        except ClickHouseError:
            raise
        except Exception as exc:
            raise engine_error(exc) from None
        return bytes(chunk.bytes())

    def finish(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()
            self._stream = None
        self._stack.close()


def _summary(result: Any, started: float, insert: bool) -> dict[str, str]:
    elapsed = str(int((time.perf_counter() - started) * 1e9))
    if result is None:
        return {"elapsed_ns": elapsed}
    rows, nbytes = int(result.rows_read()), int(result.bytes_read())
    written_rows = int(result.rows_written()) if insert else 0
    written_bytes = int(result.bytes_written()) if insert else 0
    if insert and not written_rows:
        # An INFILE insert reads exactly the rows it writes.
        written_rows, written_bytes = rows, nbytes
    return {
        "read_rows": str(rows),
        "read_bytes": str(nbytes),
        "written_rows": str(written_rows),
        "written_bytes": str(written_bytes),
        "total_rows_to_read": str(rows),
        "result_rows": "0" if insert else str(rows),
        "result_bytes": "0",
        "elapsed_ns": elapsed,
    }
