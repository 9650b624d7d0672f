"""A replay HTTP server on 127.0.0.1: serves recorded real responses and injects faults on demand.

Faults, queued per path and consumed one per request: "500", "503", "429" (with Retry-After), "slow" (no
answer until past the client's timeout), "truncate" (half the body, then close), "reset" (TCP RST).
A request with If-None-Match equal to the route's ETag gets 304.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

FAULTS = ("500", "503", "429", "slow", "truncate", "reset")


@dataclass
class Recorded:
    """One recorded response body."""

    body: bytes
    content_type: str = "application/octet-stream"
    etag: str | None = None
    status: int = 200  # 400: the route refused the query (tests/datajobs/routes.py checks what jobs send)

    @classmethod
    def file(cls, path: Path, content_type: str, etag: bool = False) -> Recorded:
        body = path.read_bytes()
        return cls(body, content_type, f'"{hashlib.sha256(body).hexdigest()[:16]}"' if etag else None)


Route = Recorded | Callable[[dict[str, list[str]]], Recorded]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    received: float  # time.monotonic() when the server read the request: tests time the client by these


@dataclass
class ReplayServer:
    routes: dict[str, Route]
    retry_after_s: int = 1
    slow_s: float = 3.0
    requests: list[Request] = field(default_factory=list)
    faults: dict[str, deque[str]] = field(default_factory=lambda: defaultdict(deque))
    always: dict[str, str] = field(default_factory=dict)

    def fail(self, path: str, *faults: str) -> None:
        """Answer the next requests to `path` with these faults, in order, then normally."""
        assert all(f in FAULTS for f in faults), faults
        self.faults[path].extend(faults)

    def fail_always(self, path: str, fault: str) -> None:
        assert fault in FAULTS, fault
        self.always[path] = fault

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, path: str) -> int:
        return sum(r.path == path for r in self.requests)

    def __enter__(self) -> ReplayServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def _serve(self, method: str) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                query = parse_qs(parts.query)
                if method == "POST" and self.headers.get("Content-Type", "").startswith("application/x-www-form"):
                    query.update(parse_qs(body.decode()))
                server.requests.append(Request(method, parts.path, query, dict(self.headers), body, time.monotonic()))
                route = server.routes.get(parts.path)
                if route is None:
                    return self._send(404, b"no recorded response for this path", "text/plain")
                rec = route(query) if callable(route) else route
                if rec.status != 200:
                    return self._send(rec.status, rec.body, rec.content_type)
                fault = (
                    server.faults[parts.path].popleft() if server.faults[parts.path] else server.always.get(parts.path)
                )
                if fault in ("500", "503"):
                    return self._send(
                        int(fault),
                        b"Internal error (injected)",
                        "text/plain",
                        {"Retry-After": str(server.retry_after_s)} if fault == "503" else {},
                    )
                if fault == "429":
                    return self._send(
                        429, b"Too Many Requests (injected)", "text/plain", {"Retry-After": str(server.retry_after_s)}
                    )
                if fault == "slow":
                    time.sleep(server.slow_s)
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return None
                if rec.etag and self.headers.get("If-None-Match") == rec.etag:
                    return self._send(304, b"", rec.content_type, {"ETag": rec.etag})
                extra = {"ETag": rec.etag} if rec.etag else {}
                if fault == "truncate":
                    self.send_response(200)
                    self.send_header("Content-Type", rec.content_type)
                    self.send_header("Content-Length", str(len(rec.body)))
                    self.end_headers()
                    self.wfile.write(rec.body[: len(rec.body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return None
                return self._send(200, rec.body, rec.content_type, extra)

            def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if status != 304:
                    self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
