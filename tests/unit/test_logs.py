"""Log lines repeated during an outage are logged once per window, with a count of the rest."""
import logging

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
