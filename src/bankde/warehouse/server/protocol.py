"""ClickHouse's HTTP interface: which URL parameters are transport, settings or query parameters,
the statement's shape (trailing FORMAT, INSERT with data), and errors as ClickHouse writes them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

# ClickHouse error codes the front raises itself (src/Common/ErrorCodes.cpp).
NOT_IMPLEMENTED = 48
UNKNOWN_FORMAT = 73
READONLY = 164
REQUIRED_PASSWORD = 194
TOO_MANY_SIMULTANEOUS_QUERIES = 202
SESSION_NOT_FOUND = 372
SESSION_IS_LOCKED = 373
AUTHENTICATION_FAILED = 516
UNKNOWN_ERROR = 1000

# How ClickHouse's HTTPHandler maps an exception code to an HTTP status (exceptionCodeToHTTPStatus).
_STATUS: dict[int, int] = {
    **dict.fromkeys((REQUIRED_PASSWORD, AUTHENTICATION_FAILED, 192), 401),  # 192 UNKNOWN_USER
    **dict.fromkeys((READONLY, 497), 403),  # 497 ACCESS_DENIED
    # Parse, syntax, argument and type errors: the request is wrong.
    **dict.fromkeys(
        (6, 25, 26, 27, 32, 33, 36, 38, 41, 42, 43, 44, 53, 62, 69, 70, 72, 117, SESSION_NOT_FOUND),
        400,
    ),
    **dict.fromkeys((16, 46, 47, 50, 56, 60, 81, 115, UNKNOWN_FORMAT), 404),  # unknown thing
    SESSION_IS_LOCKED: 423,
    NOT_IMPLEMENTED: 501,
    TOO_MANY_SIMULTANEOUS_QUERIES: 503,
}

_CODE_RE = re.compile(r"Code: (\d+)\.")
# The exception name ClickHouse appends in parentheses, e.g. "(UNKNOWN_TABLE)".
_VERSION_TAIL_RE = re.compile(r"\s*\(version [^)]*\)")


class ClickHouseError(Exception):
    """An error to answer exactly as a ClickHouse server would: code, name, one message."""

    def __init__(self, code: int, message: str, name: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.name = name
        self.message = message

    @property
    def http_status(self) -> int:
        return _STATUS.get(self.code, 500)

    def body(self, version: str) -> bytes:
        """`Code: N. DB::Exception: message. (NAME) (version V)` + newline, as the server writes it."""
        text = self.message
        if not text.startswith("Code:"):
            tail = f" ({self.name})" if self.name else ""
            text = f"Code: {self.code}. DB::Exception: {text}.{tail}"
        text = _VERSION_TAIL_RE.sub("", text).rstrip()
        return f"{text} (version {version})\n".encode()


def engine_error(exc: BaseException) -> ClickHouseError:
    """The engine's exception as a ClickHouseError with its own code (chDB nests the text once per
    rethrow: "Code: 73. DB::Exception: Code: 73. DB::Exception: …"; keep the innermost)."""
    text = str(exc).strip()
    match = _CODE_RE.search(text)
    if match is None:
        return ClickHouseError(UNKNOWN_ERROR, text or type(exc).__name__, "UNKNOWN_EXCEPTION")
    code = int(match.group(1))
    inner = text.rsplit("DB::Exception: ", 1)[-1]
    inner = _VERSION_TAIL_RE.sub("", inner)
    # chDB repeats "(NAME)" once per nesting level; one is what a server prints.
    name_match = re.search(r"\(([A-Z_]+)\)", inner)
    name = name_match.group(1) if name_match else ""
    message = inner.split(f". ({name})")[0] if name else inner
    return ClickHouseError(code, f"Code: {code}. DB::Exception: {message}. ({name})", name)


# --- URL parameters ------------------------------------------------------------------------

# Parameters the HTTP handler itself consumes (never forwarded as settings).
TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "quota_key",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "role",
        "stacktrace",
        "max_query_size",
    }
)
# Settings that only shape the HTTP exchange; the front honours or ignores them, the engine
# never sees them (chDB would apply them to nothing).
HTTP_ONLY_SETTINGS = frozenset(
    {
        "enable_http_compression",
        "http_zlib_compression_level",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "add_http_cors_header",
        "http_response_buffer_size",
        "http_wait_end_of_query",
        "http_write_exception_in_output_format",
        "http_native_compression_disable_checksumming_on_decompress",
    }
)
_SETTING_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class RequestParams:
    """A request's URL parameters, split the way ClickHouse's HTTP handler splits them."""

    transport: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    http_settings: dict[str, str] = field(default_factory=dict)
    query_params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> RequestParams:
        out = cls()
        for key, value in params.items():
            if key in TRANSPORT_PARAMS:
                out.transport[key] = value
            elif key.startswith("param_"):
                out.query_params[key[len("param_") :]] = value
            elif key in HTTP_ONLY_SETTINGS:
                out.http_settings[key] = value
            elif _SETTING_NAME_RE.match(key):
                out.settings[key] = value
            else:
                raise ClickHouseError(115, f"Unknown setting '{key}'", "UNKNOWN_SETTING")
        return out

    def flag(self, name: str) -> bool:
        value = self.transport.get(name, self.http_settings.get(name, "0"))
        return value.strip().lower() in ("1", "true")


# --- statements ----------------------------------------------------------------------------

_LEADING_NOISE_RE = re.compile(r"^(?:\s+|--[^\n]*\n|/\*.*?\*/)*", re.DOTALL)
_TRAILING_FORMAT_RE = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.IGNORECASE)
# `INSERT INTO t [(cols)] [SETTINGS …] FORMAT Fmt` followed by a line of data (curl-style body).
_INLINE_DATA_RE = re.compile(
    r"^(.*?\bFORMAT\s+[A-Za-z0-9_]+)[ \t]*\r?\n", re.IGNORECASE | re.DOTALL
)
_INPUT_FN_RE = re.compile(r"\binput\s*\(", re.IGNORECASE)
_SELECT_RE = re.compile(r"\bSELECT\b", re.IGNORECASE)


def first_keyword(sql: str) -> str:
    """The statement's first word, upper-case ('' for an empty statement)."""
    body = _LEADING_NOISE_RE.sub("", sql, count=1)
    match = re.match(r"[A-Za-z]+", body)
    return match.group(0).upper() if match else ""


def trailing_format(sql: str) -> str | None:
    match = _TRAILING_FORMAT_RE.search(sql)
    return match.group(1) if match else None


def split_inline_data(text: str) -> tuple[str, int] | None:
    """An INSERT sent entirely in the body, `… FORMAT CSV\\n1,2\\n`: (statement, offset of the
    data in `text`)."""
    if first_keyword(text) != "INSERT":
        return None
    match = _INLINE_DATA_RE.match(text)
    if match is None:
        return None
    return match.group(1), match.end()


def infile_insert(sql: str, path: str) -> str:
    """The INSERT that reads its data from the spooled file `path` instead of the request body.

    `INSERT INTO t (cols) FORMAT F` → `INSERT INTO t (cols) FROM INFILE 'path' FORMAT F`;
    `INSERT INTO t SELECT … FROM input('struct') FORMAT F` → `… FROM file('path', 'F', 'struct')`.
    """
    fmt_match = _TRAILING_FORMAT_RE.search(sql)
    if fmt_match is None:
        raise ClickHouseError(
            62,
            "an INSERT with data in the request body must end with FORMAT <format>",
            "SYNTAX_ERROR",
        )
    fmt = fmt_match.group(1)
    head = sql[: fmt_match.start()].rstrip()
    quoted = "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if _INPUT_FN_RE.search(head):
        return _INPUT_FN_RE.sub(f"file({quoted}, '{fmt}', ", head, count=1)
    if _SELECT_RE.search(head):
        raise ClickHouseError(
            NOT_IMPLEMENTED,
            "INSERT … SELECT with data in the request body is supported only through input()",
            "NOT_IMPLEMENTED",
        )
    settings = ""
    settings_match = re.search(r"\bSETTINGS\b", head, re.IGNORECASE)
    if settings_match is not None:
        head, settings = (
            head[: settings_match.start()].rstrip(),
            " " + head[settings_match.start() :],
        )
    return f"{head} FROM INFILE {quoted}{settings} FORMAT {fmt}"


# --- formats -------------------------------------------------------------------------------

# chDB's send_query yields each block encoded on its own; concatenating them is a valid stream
# only for formats without a header or footer. Everything else is produced in one piece.
STREAMABLE_FORMATS = frozenset(
    {
        "Native",
        "TabSeparated",
        "TSV",
        "TabSeparatedRaw",
        "TSVRaw",
        "CSV",
        "RowBinary",
        "JSONEachRow",
        "JSONCompactEachRow",
        "JSONLines",
        "NDJSON",
    }
)

_CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "TabSeparatedWithNames": "text/tab-separated-values; charset=UTF-8",
    "TSVWithNames": "text/tab-separated-values; charset=UTF-8",
    "TabSeparatedWithNamesAndTypes": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
    "CSVWithNames": "text/csv; charset=UTF-8; header=present",
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
    "Pretty": "text/plain; charset=UTF-8",
    "PrettyCompact": "text/plain; charset=UTF-8",
    "Values": "text/plain; charset=UTF-8",
}


def content_type(fmt: str) -> str:
    return _CONTENT_TYPES.get(fmt, "application/octet-stream")
