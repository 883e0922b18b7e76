"""Log lines repeated during an outage are logged once per window, with a count of the rest."""
import logging
import threading
import time

from driftline.stream.logs import RepeatFilter


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def record(msg: str, level: int = logging.WARNING, name: str = "driftline.kafka") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_repeats_are_dropped_within_the_window_and_counted_after_it():
    clock = Clock()
    f = RepeatFilter(window=10.0, clock=clock)
    passed = []
    for i in range(1000):  # a broker away: the same refusal, with changing ports and timings
        clock.t = i * 0.02  # 50 lines a second for 20 s
        r = record(f"FAIL 127.0.0.1:{40000 + i}/1: Connect failed (after {i}ms in state CONNECT)")
        if f.filter(r):
            passed.append(r.getMessage())
    assert len(passed) == 2  # the first line, then one per 10 s window
    assert passed[1].endswith("(499 similar lines in the last 10 s)")
    assert not passed[0].endswith("s)") or "similar" not in passed[0]


def test_different_lines_info_lines_and_driftline_errors_always_pass():
    f = RepeatFilter(window=10.0, clock=Clock())
    assert f.filter(record("consumer: broker down"))
    assert f.filter(record("transaction commit: timed out"))
    assert f.filter(record("consumer: broker down", name="driftline.worker"))
    assert not f.filter(record("consumer: broker down"))
    # librdkafka's refusals are ERRORs: limited too; driftline's own errors and INFO lines never.
    assert f.filter(record("FAIL connect refused", logging.ERROR)) and not f.filter(record("FAIL connect refused", logging.ERROR))
    worker = "driftline.worker"
    assert all(f.filter(record("stopped on a fatal error", logging.ERROR, worker)) for _ in range(5))
    assert all(f.filter(record(f"restored g/intake/{p} from its checkpoint", logging.INFO, worker)) for p in range(5))


def test_a_kind_that_falls_silent_gets_its_count_from_flush():
    clock = Clock()
    f = RepeatFilter(window=10.0, clock=clock)
    for i in range(300):  # a 3 s burst, then the broker is back: no later line of the kind
        clock.t = i * 0.01
        f.filter(record(f"FAIL 127.0.0.1:{40000 + i}/1: Connect failed"))
    assert f.flush() == []  # the window is still open
    clock.t = 10.5
    [summary] = f.flush()
    assert summary.getMessage() == "FAIL 127.0.0.1:40299/1: Connect failed (299 similar lines in the last 10 s)"
    assert summary.name == "driftline.kafka" and summary.levelno == logging.WARNING
    assert f.filter(summary)  # a summary always passes the filter it came from
    assert f.flush() == []  # counted once
    assert f.filter(record("FAIL 127.0.0.1:1/1: Connect failed"))  # the kind was forgotten: its next line passes


def test_install_writes_the_summary_of_a_silent_kind_from_its_own_thread():
    from driftline.stream.logs import install

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, r):
            self.lines.append(r.getMessage())

    root = logging.getLogger()
    lines = Lines()
    root.addHandler(lines)
    try:
        f = install(window=0.2, flush_every=0.05)
        log = logging.getLogger("driftline.worker")
        for _ in range(5):
            log.warning("checkpoint round skipped: every broker is unreachable")
        done = threading.Event()
        for _ in range(100):  # nothing else is logged: only the thread can write the count
            if any("4 similar lines" in line for line in lines.lines):
                done.set()
                break
            time.sleep(0.05)
        assert done.is_set(), lines.lines
        assert lines.lines == ["checkpoint round skipped: every broker is unreachable",
                               "checkpoint round skipped: every broker is unreachable (4 similar lines in the last 0.2 s)"]
    finally:
        root.removeHandler(lines)
        for h in root.handlers:
            h.removeFilter(f)


def test_a_filter_on_two_handlers_counts_each_line_once():
    f = RepeatFilter(window=10.0, clock=Clock())
    first, repeat = record("consumer: broker down"), record("consumer: broker down")
    assert f.filter(first) and f.filter(first)  # the same line, shown by two handlers: passes on both
    assert not f.filter(repeat) and not f.filter(repeat)

