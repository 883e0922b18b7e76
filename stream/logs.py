"""Readable logs during an outage: the same line repeated is logged once per window, with a count.

A broker outage makes librdkafka and the worker report the same failure many times a second
(connection refused per broker and client, a failed fetch per partition); those lines bury the
one that matters. `RepeatFilter` lets the first of a kind through and drops its repeats for
`window` seconds. The count of what it dropped is not lost: the kind's next line after the
window carries "(N similar lines in the last W s)", and a kind that falls silent (the broker
is back) gets that line from `flush()`, the last line it held with the count, which
`install()` runs once a second on a thread of its own (the worker's loop may be the thing
that is stuck). A kind is the logger, the level and the formatted message with its numbers
blanked out.

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
SUMMARY = "driftline_repeat_summary"  # the attribute that marks a summary line: it always passes


class _Kind:
    """What the filter remembers of one kind: when its window opened, and what it held since."""

    __slots__ = ("start", "held", "last")

    def __init__(self, start: float):
        self.start = start
        self.held = 0
        self.last: logging.LogRecord | None = None  # the latest line held back


class RepeatFilter(logging.Filter):
    def __init__(self, window: float = 10.0, clock=time.monotonic):
        super().__init__()
        self.window = window
        self.clock = clock
        self._kinds: dict[tuple, _Kind] = {}
        self._lock = threading.Lock()
        # One filter sits on every handler, so a record is shown to it once per handler: the
        # verdict on the record it saw last is given again (counting it twice would hold back
        # the second handler's copy of a line the first let through).
        self._last: tuple[logging.LogRecord | None, bool] = (None, True)

    def _counted(self, msg: str, held: int) -> str:
        return f"{msg} ({held} similar lines in the last {self.window:g} s)"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != KAFKA_LOGGER and record.levelno != logging.WARNING:
            return True
        if getattr(record, SUMMARY, False):
            return True
        with self._lock:
            last, verdict = self._last
            if record is last:
                return verdict
            verdict = self._judge(record)
            self._last = (record, verdict)
            return verdict

    def _judge(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, _NUMBERS.sub("#", record.getMessage()))
        now = self.clock()
        seen = self._kinds.get(kind)
        if seen is None or now - seen.start >= self.window:
            held = seen.held if seen is not None else 0
            if seen is None and len(self._kinds) >= MAX_KINDS:
                del self._kinds[next(iter(self._kinds))]
            self._kinds[kind] = _Kind(now)
            if held:
                record.msg = self._counted(record.getMessage(), held)
                record.args = None
            return True
        seen.held += 1
        seen.last = record
        return False

    def flush(self) -> list[logging.LogRecord]:
        """The summary lines of kinds whose window has closed with lines held back: the last line
        held, with the count. Those kinds are forgotten (their next line passes at once)."""
        now = self.clock()
        out = []
        with self._lock:
            closed = [kind for kind, seen in self._kinds.items() if seen.held and now - seen.start >= self.window]
            for kind in closed:
                seen = self._kinds.pop(kind)
                last = seen.last
                # A new record (stamped now: the log stays in time order), the held line's text.
                summary = logging.LogRecord(last.name, last.levelno, last.pathname, last.lineno,
                                            self._counted(last.getMessage(), seen.held), None, None)
                setattr(summary, SUMMARY, True)
                out.append(summary)
        return out


def _flush_forever(f: RepeatFilter, every: float) -> None:
    while True:
        time.sleep(every)
        for summary in f.flush():
            logging.getLogger(summary.name).handle(summary)


def install(window: float = 10.0, flush_every: float = 1.0) -> RepeatFilter:
    """Put one RepeatFilter on every handler of the root logger (call after basicConfig), and
    start the thread that writes the counts of kinds gone quiet."""
    f = RepeatFilter(window)
    for handler in logging.getLogger().handlers:
        handler.addFilter(f)
    threading.Thread(target=_flush_forever, args=(f, flush_every), name="driftline-log-summaries", daemon=True).start()
    return f


def kafka_logger() -> logging.Logger:
    """The logger librdkafka's own lines go to (instead of straight to stderr), filtered too."""
    return logging.getLogger(KAFKA_LOGGER)
