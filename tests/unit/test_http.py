"""The status server's bounds, over real sockets: one shared render for scrapes that arrive
together, a connection cap, a timeout for clients that never read, a stop that does not wait."""
from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request

from driftline.stream.http import StatusServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlowRender:
    """A render that takes `seconds` and counts how often it runs and how many run at once."""

    def __init__(self, seconds: float, size: int = 1000):
        self.seconds, self.size = seconds, size
        self.calls = self.running = self.most = 0
        self.lock = threading.Lock()

    def __call__(self) -> bytes:
        with self.lock:
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        return b"x 1\n" * (self.size // 4)


def server(render, **kw) -> StatusServer:
    return StatusServer(f"127.0.0.1:{free_port()}", render, lambda: (True, {}), **kw).start()


def get(srv: StatusServer, timeout: float = 10.0) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.server_address[1]}/metrics", timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_scrapes_that_arrive_together_share_one_render():
    render = SlowRender(0.3)
    srv = server(render, max_connections=64)
    try:
        threads = [threading.Thread(target=get, args=(srv,)) for _ in range(30)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        # 30 scrapes in ~0.3 s: one render, perhaps two; never two at once (each walk holds the
        # worker's lock: 30 concurrent walks are what stopped ingestion).
        assert render.calls <= 2 and render.most == 1, (render.calls, render.most)
    finally:
        srv.stop()


def test_connections_past_the_cap_are_refused_at_once():
    render = SlowRender(1.5)
    srv = server(render, max_connections=4, cache_age=0.0)
    try:
        codes: list[int] = []
        threads = [threading.Thread(target=lambda: codes.append(get(srv))) for _ in range(12)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert codes.count(503) >= 6 and codes.count(200) >= 1, codes
        assert time.monotonic() - started < 10
    finally:
        srv.stop()


def test_clients_that_never_read_are_dropped_and_do_not_hold_slots():
    srv = server(lambda: b"x 1\n" * 2_000_000, max_connections=8, timeout=1.0)  # 8 MB responses
    port = srv.server_address[1]
    socks = []
    try:
        for _ in range(8):  # every slot taken by a client that asks and never reads
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(s)
        time.sleep(0.3)
        # After the timeout the server has dropped them: a real scrape gets served again.
        deadline = time.monotonic() + 15
        while get(srv, timeout=20) != 200:
            assert time.monotonic() < deadline, "slots never freed"
            time.sleep(0.5)
        started = time.monotonic()
        srv.stop()  # with clients still attached
        assert time.monotonic() - started < 2
    finally:
        for s in socks:
            s.close()


def test_a_change_of_owned_partitions_invalidates_the_cached_exposition():
    from driftline.stream.http import ExpositionCache

    owned = {"version": 0, "body": b"bank 0 and 1\n"}
    cache = ExpositionCache(lambda: owned["body"], max_age=60.0, version=lambda: owned["version"])
    assert cache.get() == b"bank 0 and 1\n"
    owned["body"] = b"bank 1\n"  # a revoke: bank 0 went to another worker
    assert cache.get() == b"bank 0 and 1\n"  # same version: the cache may serve it
    owned["version"] += 1
    assert cache.get() == b"bank 1\n"  # never the states it no longer owns, once it knows


def test_a_render_that_waited_for_the_worker_lock_does_not_keep_the_exposition_stale():
    """The cache keeps a body for 5x what its render cost, so that walks hold the worker's lock a
    small share of the time; a render that spent its time waiting for that lock (the loop held it
    for a whole step of a backlog) walked no longer, and must not make the next scrapes stale for
    5x its wait (seen: /metrics frozen for 50 s under a backlog worker)."""
    from driftline.stream.http import ExpositionCache

    worker_lock = threading.Lock()
    state = {"labeled": 0}

    def render() -> bytes:
        with worker_lock:  # as the exporter's collectors do
            return f"labeled {state['labeled']}\n".encode()

    cache = ExpositionCache(render, max_age=0.05)
    worker_lock.acquire()  # the loop is in the middle of a long step
    releaser = threading.Timer(0.6, worker_lock.release)
    releaser.start()
    assert cache.get() == b"labeled 0\n"  # waited 0.6 s for the lock, walked for microseconds
    releaser.join()
    state["labeled"] = 5
    time.sleep(0.1)  # past max_age, well inside 5 x 0.6 s
    assert cache.get() == b"labeled 5\n"
    assert cache.renders == 2
