"""`/metrics`, `/healthz` and `/readyz` of a worker, served from a thread of its own.

The worker's loop stays single-threaded; this thread only reads (the collector takes the
worker's lock while it renders, see stream/exporter.py).
"""
from __future__ import annotations

import http.server
import threading
from typing import Callable

import orjson
from prometheus_client import CONTENT_TYPE_LATEST


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:8000`) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
        raise ValueError(f"listen address must be HOST:PORT, e.g. 127.0.0.1:8000 (got {listen!r})")
    return host.strip("[]"), int(port)


class StatusServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, listen: str, metrics: Callable[[], bytes], readiness: Callable[[], tuple[bool, dict]]):
        host, port = parse_listen(listen)
        if ":" in host:
            self.address_family = __import__("socket").AF_INET6
        self.metrics = metrics
        self.readiness = readiness
        super().__init__((host, port), _Handler)
        self._thread = threading.Thread(target=self.serve_forever, name="driftline-http", daemon=True)

    def start(self) -> "StatusServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: StatusServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.server.metrics(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._send(200, b'{"status":"ok"}', "application/json")
        elif path == "/readyz":
            ready, detail = self.server.readiness()
            self._send(200 if ready else 503, orjson.dumps({"ready": ready, **detail}), "application/json")
        else:
            self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # scrapes every few seconds would flood the log
        pass
