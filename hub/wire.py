"""Bytes on the wire: WebSocket frames, SSE records and HTTP chunks, built once per event.

The fan-out writes these pre-built byte strings straight to each subscriber's transport,
so the per-subscriber cost of a delivery is one `transport.write`, not an encode.
"""

from __future__ import annotations

from websockets.frames import Frame, Opcode

__all__ = ["ws_text_frame", "sse_record", "sse_comment", "http_chunk"]


def ws_text_frame(payload: bytes) -> bytes:
    """A final, unmasked, uncompressed text frame (server to client), per RFC 6455."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False)


def sse_record(seq: int, type_: str, body: bytes) -> bytes:
    # orjson never emits a raw newline, and event types are validated to hold none,
    # so one `data:` line always carries the whole event.
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, type_.encode(), body)


def sse_comment(text: str) -> bytes:
    return b": %s\n\n" % text.encode()


def http_chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk (RFC 9112 section 7.1) around `data`."""
    return b"%x\r\n%s\r\n" % (len(data), data)
