"""HTTP Content-Encoding both ways, streamed: gzip, deflate, zstd, lz4 (frame), br if installed."""

from __future__ import annotations

import struct
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


# --- ClickHouse's own block compression (compress=1 / decompress=1) ---------------------------
# Each block: CityHash128 of the rest (16 bytes, high half first), method byte, UInt32 size of
# the compressed block with its 9-byte header, UInt32 uncompressed size, compressed data.
_NONE, _LZ4, _ZSTD = 0x02, 0x82, 0x90
_BLOCK_HEADER = 9
_MAX_BLOCK = 1024**2


def _city128(data: bytes) -> bytes:
    from clickhouse_cityhash.cityhash import CityHash128

    h = CityHash128(data)
    return struct.pack("<QQ", h >> 64, h & 0xFFFFFFFFFFFFFFFF)


class NativeEncoder:
    """Response bodies in ClickHouse's compressed block format (LZ4), as `compress=1` asks."""

    def feed(self, data: bytes) -> bytes:
        import lz4.block

        out = []
        for i in range(0, len(data), _MAX_BLOCK):
            piece = data[i : i + _MAX_BLOCK]
            body = lz4.block.compress(piece, store_size=False)
            framed = struct.pack("<BII", _LZ4, len(body) + _BLOCK_HEADER, len(piece)) + body
            out.append(_city128(framed) + framed)
        return b"".join(out)

    def flush(self) -> bytes:
        return b""


class NativeDecoder:
    """Request bodies in ClickHouse's compressed block format (`decompress=1`); checksums checked."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = []
        while len(self._buffer) >= 16 + _BLOCK_HEADER:
            method, size, raw_size = struct.unpack_from("<BII", self._buffer, 16)
            if len(self._buffer) < 16 + size:
                break
            framed = self._buffer[16 : 16 + size]
            if _city128(framed) != self._buffer[:16]:
                raise ClickHouseError(
                    40, "Checksum doesn't match: corrupted data", "CHECKSUM_DOESNT_MATCH"
                )
            payload = framed[_BLOCK_HEADER:]
            if method == _LZ4:
                import lz4.block

                out.append(lz4.block.decompress(payload, uncompressed_size=raw_size))
            elif method == _ZSTD:
                out.append(_zstd().decompress(payload))
            elif method == _NONE:
                out.append(payload)
            else:
                raise ClickHouseError(
                    271, f"Unknown compression method byte 0x{method:02x}", "CANNOT_DECOMPRESS"
                )
            self._buffer = self._buffer[16 + size :]
        return b"".join(out)

    def flush(self) -> bytes:
        if self._buffer:
            raise ClickHouseError(
                33, "Cannot read all data: a compressed block is cut short", "CANNOT_READ_ALL_DATA"
            )
        return b""


class _Chain:
    def __init__(self, first: Codec, second: Codec) -> None:
        self._first, self._second = first, second

    def feed(self, data: bytes) -> bytes:
        return self._second.feed(self._first.feed(data))

    def flush(self) -> bytes:
        return self._second.feed(self._first.flush()) + self._second.flush()


def request_decoder(content_encoding: str, native: bool) -> Codec | None:
    """The request body's decoder: HTTP Content-Encoding, then ClickHouse blocks (decompress=1)."""
    http = decoder(content_encoding)
    if not native:
        return http
    return NativeDecoder() if http is None else _Chain(http, NativeDecoder())


def response_encoder(http_encoding: str | None, native: bool) -> Codec | None:
    """The response body's encoder: ClickHouse blocks (compress=1), then HTTP Content-Encoding."""
    http = encoder(http_encoding) if http_encoding else None
    if not native:
        return http
    return NativeEncoder() if http is None else _Chain(NativeEncoder(), http)
