"""`/metrics`, `/healthz` and `/readyz` of a worker, served from threads of their own.

The worker's loop stays single-threaded; these threads only read (the collector takes the
worker's lock while it walks the state, see stream/exporter.py). Scrapes must never stop
ingestion nor grow memory without bound, whatever the clients do:

- `ExpositionCache`: one render at a time, shared by every scrape that arrives while it runs or
  shortly after (at most `max_age`, and at least 5x the last render's own CPU time, so that walks
  hold the worker's lock at most ~1/6 of the time however many scrapers there are; CPU time,
  not wall time: a render that waited for the lock while the loop held it walked no longer, and
  a busy backlog's loop holds it for a whole step, so in wall time one render could make the
  next scrapes stale for a minute);
- at most `max_connections` connections are served at once; more are answered 503 and closed;
- every connection has a socket timeout (`timeout`): a client that sends nothing or never reads
  its response is dropped, and its thread with it; every response shares the cached bytes;
- `stop()` returns at once: the handler threads are daemons, so SIGTERM is never held up.
"""
from __future__ import annotations

import http.server
import threading
import time
from typing import Callable

import orjson
from prometheus_client import CONTENT_TYPE_LATEST


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:8000`) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
        raise ValueError(f"listen address must be HOST:PORT, e.g. 127.0.0.1:8000 (got {listen!r})")
    return host.strip("[]"), int(port)


def check_listen(listen: str) -> tuple[str, int]:
    """`parse_listen`, then resolve the host and bind the port once, so that a worker refuses an
    address it cannot serve on before it creates any topic or joins its group."""
    import socket

    host, port = parse_listen(listen)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"listen address {listen!r}: host {host!r} does not resolve ({exc})") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            raise ValueError(f"listen address {listen!r}: cannot listen there ({exc.strerror})") from None
    return host, port


class ExpositionCache:
    """The last rendered /metrics, re-rendered by one thread at a time when it is too old."""

    def __init__(self, render: Callable[[], bytes], max_age: float = 1.0, clock=time.monotonic,
                 version: Callable[[], int] = lambda: 0, cost=time.thread_time):
        self.render = render
        # A new version (the worker's partitions changed) invalidates the cache at once: a body
        # with states the worker no longer owns would count them twice with their new owner's.
        self.version = version
        self._version = None
        self.max_age = max_age
        self.clock = clock
        self.cost = cost  # what a render costs: this thread's CPU time (the walk, not the waits)
        self._lock = threading.Lock()  # held while rendering: the others wait and share the result
        self._body: bytes | None = None
        self._rendered_at = 0.0
        self._took = 0.0
        self.renders = 0

    def get(self) -> bytes:
        with self._lock:
            now = self.clock()
            version = self.version()
            if (self._body is None or version != self._version
                    or now - self._rendered_at >= max(self.max_age, 5 * self._took)):
                started = self.cost()
                self._version = version
                self._body = self.render()
                self._took = self.cost() - started
                self._rendered_at = self.clock()
                self.renders += 1
            return self._body


class StatusServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(self, listen: str, metrics: Callable[[], bytes], readiness: Callable[[], tuple[bool, dict]],
                 max_connections: int = 32, timeout: float | None = 10.0, cache_age: float | None = 1.0,
                 version: Callable[[], int] = lambda: 0):
        host, port = parse_listen(listen)
        if ":" in host:
            self.address_family = __import__("socket").AF_INET6
        self.cache = ExpositionCache(metrics, cache_age, version=version) if cache_age is not None else None
        self.metrics = self.cache.get if self.cache is not None else metrics
        self.readiness = readiness
        self.connection_timeout = timeout
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0  # connections answered 503 because every slot was taken
        super().__init__((host, port), _Handler)
        self._thread = threading.Thread(target=self.serve_forever, name="driftline-http", daemon=True)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n"
                                b"Retry-After: 1\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def start(self) -> "StatusServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: StatusServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        # Before the streams exist: reads and writes of this connection time out (a client that
        # never sends its request, or never reads the response, is dropped after it).
        self.timeout = self.server.connection_timeout
        super().setup()

    def handle(self) -> None:
        try:
            super().handle()
        except (TimeoutError, ConnectionError):
            self.close_connection = True

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
