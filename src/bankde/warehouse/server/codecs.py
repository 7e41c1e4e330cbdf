"""HTTP Content-Encoding both ways, streamed: gzip, deflate, zstd, lz4 (frame), br if installed."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any, Protocol

from bankde.warehouse.server.protocol import ClickHouseError

# In the order the front prefers when a client accepts several (fast first).
_PREFERRED = ("lz4", "zstd", "gzip", "deflate", "br")


class Codec(Protocol):
    """A streaming (de)compressor: feed chunks, then `flush` once for the tail."""

    def feed(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class _Fn:
    def __init__(self, feed: Callable[[bytes], bytes], flush: Callable[[], bytes]) -> None:
        self._feed, self._flush = feed, flush

    def feed(self, data: bytes) -> bytes:
        return self._feed(data)

    def flush(self) -> bytes:
        return self._flush()


def _zstd() -> Any:
    try:
        from compression import zstd
    except ImportError:
        from backports import zstd
    return zstd


def _brotli() -> Any:
    try:
        import brotli
    except ImportError:
        return None
    return brotli


def supported() -> tuple[str, ...]:
    return tuple(e for e in _PREFERRED if e != "br" or _brotli() is not None)


class _Frames:
    """Decompresses a body of one or more concatenated frames (clients such as clickhouse-connect
    compress each insert block on its own): a new decompressor starts where a frame ends."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._current: Any = None

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        while data:
            if self._current is None:
                self._current = self._factory()
            out.append(self._current.decompress(data))
            if self._current.eof:
                data = self._current.unused_data
                self._current = None
            else:
                data = b""
        return b"".join(out)

    def flush(self) -> bytes:
        if self._current is not None and not self._current.eof:
            raise ClickHouseError(
                33,
                "Cannot read all data: the compressed request body ends inside a frame",
                "CANNOT_READ_ALL_DATA",
            )
        return b""


def decoder(encoding: str) -> Codec | None:
    """Decompressor of a request body's Content-Encoding (None for identity)."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return None
    if enc in ("gzip", "x-gzip"):
        return _Frames(lambda: zlib.decompressobj(wbits=31))
    if enc == "deflate":
        return _Frames(zlib.decompressobj)
    if enc == "zstd":
        return _Frames(_zstd().ZstdDecompressor)
    if enc == "lz4":
        import lz4.frame

        return _Frames(lz4.frame.LZ4FrameDecompressor)
    if enc == "br" and _brotli() is not None:
        b = _brotli().Decompressor()
        return _Fn(b.process, lambda: b"")
    raise ClickHouseError(
        48, f"Unsupported Content-Encoding '{encoding}' (supported: {', '.join(supported())})"
    )


def choose(accept_encoding: str) -> str | None:
    """The first encoding of the client's Accept-Encoding the front can produce."""
    offered = [p.split(";")[0].strip().lower() for p in accept_encoding.split(",")]
    can = supported()
    for enc in offered:
        if enc in can:
            return enc
    return None


def encoder(encoding: str) -> Codec:
    if encoding == "gzip":
        z = zlib.compressobj(1, zlib.DEFLATED, 31)
        return _Fn(z.compress, z.flush)
    if encoding == "deflate":
        z = zlib.compressobj(1)
        return _Fn(z.compress, z.flush)
    if encoding == "zstd":
        zstd = _zstd()
        c = zstd.ZstdCompressor(level=1)
        return _Fn(
            lambda d: c.compress(d, zstd.ZstdCompressor.FLUSH_BLOCK),
            lambda: c.flush(zstd.ZstdCompressor.FLUSH_FRAME),
        )
    if encoding == "lz4":
        import lz4.frame

        lz = lz4.frame.LZ4FrameCompressor()
        started = [False]

        def feed(data: bytes) -> bytes:
            head = b""
            if not started[0]:
                started[0] = True
                head = lz.begin()
            return head + lz.compress(data)

        def flush() -> bytes:
            head = b"" if started[0] else lz.begin()
            return head + lz.flush()

        return _Fn(feed, flush)
    b = _brotli().Compressor(quality=1)
    return _Fn(b.process, b.finish)
