"""`driftline run` with a pause after each partition assignment (a fault injected by tests).

Run as `python -m tests.integration.slow_assign SECONDS run --config ...`. The pause comes after
`Consumer.assign`, inside the assignment callback, as slow work there would (a slow checkpoint
commit, uncached watermark queries): the consumer's fetchers fill meanwhile, so the `consume()`
that ran the callback returns a full batch instead of the few messages that arrive within its
20 ms. What the worker must do right does not depend on that timing; this makes the timing
certain. It logs how many input messages the first batch after each assignment held
(`FIRST_BATCH`), so a test can check the pause did what it is for.
"""
from __future__ import annotations

import sys
import time

from driftline.stream import cli
from driftline.stream.ordering import EventTimeDriver
from driftline.stream.worker import Worker

FIRST_BATCH = "input messages in the first batch after an assignment:"


def main() -> int:
    pause = float(sys.argv[1])
    assigned, process = EventTimeDriver.assigned, Worker._process
    first = {"pending": False}  # assigned, and no input message processed since

    def slow_assigned(self, partitions):
        assigned(self, partitions)
        time.sleep(pause)
        first["pending"] = True

    def counting_process(self, msgs):
        if first["pending"]:
            inputs = (self.topics.inferences, self.topics.labels)
            n = sum(1 for m in msgs if m.error() is None and m.topic() in inputs)
            if n:
                print(FIRST_BATCH, n, file=sys.stderr, flush=True)
                first["pending"] = False
        return process(self, msgs)

    EventTimeDriver.assigned = slow_assigned
    Worker._process = counting_process
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
