"""Readable logs during an outage: the same line repeated is logged once per window, with a count.

A broker outage makes librdkafka and the worker report the same failure many times a second
(connection refused per broker and client, a failed fetch per partition); those lines bury the
one that matters. `RepeatFilter` lets the first of a kind through, drops its repeats for
`window` seconds, and then lets the next one through with "(N similar lines in the last W s)".
A kind is the logger, the level and the formatted message with its numbers blanked out.

Only repeats that an outage makes are limited: WARNING lines of driftline's loggers, and every
line librdkafka logs (`driftline.kafka`, where a refused connection is an ERROR). INFO lines
(assignments, restores) and driftline's own errors always pass.
"""
from __future__ import annotations

import logging
import re
import threading
import time

_NUMBERS = re.compile(r"\d+")
MAX_KINDS = 1000  # distinct kinds remembered; the oldest go first
KAFKA_LOGGER = "driftline.kafka"


class RepeatFilter(logging.Filter):
    def __init__(self, window: float = 10.0, clock=time.monotonic):
        super().__init__()
        self.window = window
        self.clock = clock
        self._kinds: dict[tuple, list] = {}  # kind -> [window start, suppressed count]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != KAFKA_LOGGER and record.levelno != logging.WARNING:
            return True
        kind = (record.name, record.levelno, _NUMBERS.sub("#", record.getMessage()))
        now = self.clock()
        with self._lock:
            seen = self._kinds.get(kind)
            if seen is None or now - seen[0] >= self.window:
                suppressed = seen[1] if seen is not None else 0
                if seen is None and len(self._kinds) >= MAX_KINDS:
                    del self._kinds[next(iter(self._kinds))]
                self._kinds[kind] = [now, 0]
                if suppressed:
                    record.msg = f"{record.getMessage()} ({suppressed} similar lines in the last {self.window:.0f} s)"
                    record.args = None
                return True
            seen[1] += 1
            return False


def install(window: float = 10.0) -> RepeatFilter:
    """Put one RepeatFilter on every handler of the root logger (call after basicConfig)."""
    f = RepeatFilter(window)
    for handler in logging.getLogger().handlers:
        handler.addFilter(f)
    return f


def kafka_logger() -> logging.Logger:
    """The logger librdkafka's own lines go to (instead of straight to stderr), filtered too."""
    return logging.getLogger(KAFKA_LOGGER)
