"""A minimal faust-streaming worker for test_kafka_clients.py, run in its own process.

    python tests/integration/faust_probe.py --bootstrap 127.0.0.1:PORT --topic T --partitions N \
        --expect K --out FILE --app-id ID [--timeout SECONDS]

Consumes T (declared with N partitions, as the real worker declares its topics) in consumer
group ID through aiokafka, appends one JSON line per message to FILE, and once it has K distinct
(partition, offset) pairs shuts down gracefully (SIGTERM to itself) and exits 0. A hard timer
exits 3 after --timeout seconds whatever faust is doing, so the test can never hang on it.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import threading


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--partitions", type=int, required=True)
    ap.add_argument("--expect", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--app-id", required=True)
    ap.add_argument("--timeout", type=float, default=90.0)
    ap.add_argument("--datadir", default=None, help="faust's data dir (default: its app-id under the cwd)")
    args = ap.parse_args()

    def hard_stop():
        print(f"faust_probe: timeout after {args.timeout} s", flush=True)
        os._exit(3)

    timer = threading.Timer(args.timeout, hard_stop)
    timer.daemon = True
    timer.start()

    import aiokafka
    import faust

    print(f"faust_probe: faust-streaming {faust.__version__}, aiokafka {aiokafka.__version__}", flush=True)
    app = faust.App(
        args.app_id,
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        datadir=args.datadir or f"{args.app_id}-data",
        autodiscover=False,
        web_enabled=False,              # no port to collide with
        topic_partitions=args.partitions,  # faust's default is 8; the topic has what the test made
        topic_disable_leader=True,      # no extra __assignor-__leader topic
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=0.5,
    )
    topic = app.topic(args.topic, partitions=args.partitions, key_serializer="raw", value_serializer="raw")
    out = open(args.out, "a", buffering=1)
    seen: set[tuple[int, int]] = set()

    @app.agent(topic)
    async def collect(stream):
        async for event in stream.events():
            msg = event.message
            out.write(json.dumps({
                "key": event.key.decode() if event.key is not None else None,
                "value": event.value.decode(),
                "partition": msg.partition,
                "offset": msg.offset,
            }) + "\n")
            seen.add((msg.partition, msg.offset))
            if len(seen) == args.expect:
                out.flush()
                os.kill(os.getpid(), signal.SIGTERM)  # the worker's own graceful shutdown

    worker = faust.Worker(app, loglevel="INFO", quiet=True)  # INFO: the test prints the tail on failure
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
