"""A gRPC call from a client that never reads: HTTP/2 over a raw loopback socket that gives the
server's streams no flow-control window (SETTINGS_INITIAL_WINDOW_SIZE 0, never a WINDOW_UPDATE),
so not one byte of a response message can leave the server. The connection itself stays healthy:
a reader thread acknowledges SETTINGS and answers PINGs, as a client library does while its
application is not reading. Headers go out as HPACK literals (no indexing, no Huffman)."""
from __future__ import annotations

import socket
import struct
import threading
from typing import Optional

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
STREAM = 1


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + \
        struct.pack(">I", stream) + payload


def hpack_int(n: int) -> bytes:
    """An HPACK integer with a 7-bit prefix (the string length of a non-Huffman literal)."""
    if n < 127:
        return bytes([n])
    out, n = [127], n - 127
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    return bytes(out + [n])


def hpack_literal(name: str, value: str) -> bytes:
    """Literal header field without indexing, new name."""
    return b"\x00" + b"".join(hpack_int(len(s)) + s for s in (name.encode(), value.encode()))


class NeverReadingCall:
    """One unary-request call (`path`, serialized `request`) on its own connection to `address`
    (HOST:PORT). `ended` is set when the server ends the stream (RST_STREAM or trailers) or the
    connection; `how` says which and `data_bytes` counts the response bytes that got through."""

    def __init__(self, address: str, path: str, request: bytes, timeout: float) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.settimeout(None)  # the reader blocks until the server sends or closes
        self.ended = threading.Event()
        self.how: Optional[str] = None
        self.data_bytes = 0
        self._send_lock = threading.Lock()
        headers = b"".join(hpack_literal(k, v) for k, v in (
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", address),
            ("content-type", "application/grpc"), ("te", "trailers")))
        message = b"\x00" + struct.pack(">I", len(request)) + request  # gRPC length prefix
        self._send(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HI",
                                                            SETTINGS_INITIAL_WINDOW_SIZE, 0))
                   + frame(HEADERS, END_HEADERS, STREAM, headers)
                   + frame(DATA, END_STREAM, STREAM, message))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def close(self) -> None:
        """Closes the connection (what a client that goes away does)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._reader.join(timeout=60)

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def _end(self, how: str) -> None:
        if self.how is None:
            self.how = how
        self.ended.set()

    def _recv_exactly(self, n: int) -> Optional[bytes]:
        buf = b""
        while len(buf) < n:
            try:
                d = self.sock.recv(n - len(buf))
            except OSError:
                return None
            if not d:
                return None
            buf += d
        return buf

    def _read(self) -> None:
        while True:
            head = self._recv_exactly(9)
            if head is None:
                return self._end("connection closed")
            length = int.from_bytes(head[:3], "big")
            kind, flags = head[3], head[4]
            stream = struct.unpack(">I", head[5:9])[0] & 0x7FFFFFFF
            payload = self._recv_exactly(length) if length else b""
            if payload is None:
                return self._end("connection closed")
            if kind == SETTINGS and not flags & ACK:
                self._send(frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                self._send(frame(PING, ACK, 0, payload))
            elif kind == GOAWAY:
                self._end("GOAWAY")
            elif stream == STREAM and kind == DATA:
                self.data_bytes += length
            elif stream == STREAM and kind == RST_STREAM:
                self._end(f"RST_STREAM (error code {struct.unpack('>I', payload)[0]})")
            elif stream == STREAM and kind == HEADERS and flags & END_STREAM:
                self._end("trailers")
