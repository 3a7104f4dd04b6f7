"""HTTP/1.1 over a raw socket for the tests that need to send what a client library would not
(slow, partial or malformed requests) and read the answer themselves."""
from __future__ import annotations

import socket


def read_response(s: socket.socket) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 response (Content-Length framed) from `s`."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        assert d, f"connection closed before a response: {buf[:200]!r}"
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        d = s.recv(65536)
        assert d, "connection closed inside a response body"
        rest += d
    return status, headers, rest[:n]


def read_all(s: socket.socket) -> bytes:
    """What the server sends until it closes (a reset counts as closed)."""
    out = b""
    while True:
        try:
            d = s.recv(65536)
        except ConnectionResetError:
            return out
        if not d:
            return out
        out += d
