"""The publishing SDK's cost per call in the request path, and the rate its events are delivered.

Needs a broker; a local one (no Docker) starts with

    deploy/local/kafka start                       # 127.0.0.1:9092; KAFKA_PORT=... for another port
    .venv/bin/python bench/sdk.py --bootstrap 127.0.0.1:9092

Writes bench/results/sdk.json and prints a summary. It publishes to topics of its own
(driftline-bench-*, deleted at the end), never to driftline.inferences, so a worker running on
the same broker sees nothing of it.

What is measured, with a realistic event (8 features, score, segment, ~250 bytes):
- per_call_us.burst: `log_prediction` back to back, each call timed (perf_counter_ns);
- per_call_us.paced: 2,000 calls/s with a sleep between them, as calls land among requests
  (caches are colder: this is closer to what a serving system pays);
- per_call_us.broker_down: back to back against a closed port (events only queue);
- per_call_us.encode_only: building and checking the event, without Kafka;
- delivery: `--events` calls as fast as the local queue takes them, then flush: events
  delivered (acknowledged by the broker) per second, first call to last acknowledgement.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import sys
import time
import uuid
from pathlib import Path

import confluent_kafka
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from driftline.stream.publish import PRODUCER_DEFAULTS, Publisher, encode_inference  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "sdk.json"


def requests(n: int, seed: int = 1) -> list[dict]:
    """Pre-built calls, so that making them up is not part of the cost."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        plan = rng.choice(["basic", "pro"])
        features = {"tenure": rng.randint(1, 72), "monthly_charges": round(rng.gauss(70, 12), 2),
                    "support_calls": rng.randint(0, 6), "plan": plan, "contract": rng.choice(["monthly", "yearly"]),
                    "age": rng.randint(18, 90), "paperless": rng.random() < 0.5, "income": round(rng.lognormvariate(10, 0.5), 2)}
        out.append(dict(model="churn", features=features, prediction=rng.random() < 0.3, score=round(rng.random(), 4),
                        segment={"region": rng.choice(["eu", "us", "apac"])}, model_version="2026.01"))
    return out


def summary(us: list[float]) -> dict:
    s = sorted(us)
    q = lambda p: round(s[min(len(s) - 1, int(len(s) * p))], 2)
    return {"calls": len(s), "mean": round(sum(s) / len(s), 2), "p50": q(0.5), "p99": q(0.99), "p999": q(0.999),
            "max": round(s[-1], 1)}


def timed(pub: Publisher, calls: list[dict], pause: float = 0.0) -> dict:
    cost = []
    clock = time.perf_counter_ns
    for kw in calls:
        t0 = clock()
        pub.log_prediction(**kw)
        cost.append((clock() - t0) / 1000)
        if pause:
            time.sleep(pause)
    return summary(cost)


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--events", type=int, default=300_000, help="events in the delivery run")
    ap.add_argument("--calls", type=int, default=50_000, help="timed calls in the burst run")
    ap.add_argument("--paced", type=int, default=10_000, help="timed calls in the paced run (2,000/s)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    prefix = f"driftline-bench-{uuid.uuid4().hex[:8]}"
    topics = [f"{prefix}.inferences", f"{prefix}.labels"]
    for f in admin.create_topics([NewTopic(t, 3, 1) for t in topics]).values():
        f.result(30)
    calls = requests(max(args.events, args.calls, args.paced))
    sample = encode_inference(prediction_id=uuid.uuid4().hex, timestamp=time.time(), **calls[0])
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "confluent_kafka": confluent_kafka.__version__, "librdkafka": confluent_kafka.libversion()[0],
                          "platform": platform.platform(),
                          # Other processes on the machine inflate every figure: say how busy it was.
                          "load_average_1m_at_start": round(os.getloadavg()[0], 2)},
              "event_bytes": len(sample), "producer_settings": {k: v for k, v in PRODUCER_DEFAULTS.items()},
              "per_call_us": {}}
    try:
        t0 = time.perf_counter_ns()
        for kw in calls[:args.calls]:
            encode_inference(prediction_id="0" * 32, timestamp=1.0, **kw)
        result["per_call_us"]["encode_only"] = {"calls": args.calls,
                                                "mean": round((time.perf_counter_ns() - t0) / 1000 / args.calls, 2)}

        with Publisher(args.bootstrap, inferences_topic=topics[0], labels_topic=topics[1]) as pub:
            pub.log_prediction(**calls[0]) and pub.flush(10)  # connected, metadata known
            result["per_call_us"]["burst"] = timed(pub, calls[:args.calls])
            pub.flush(60)
            result["per_call_us"]["paced"] = timed(pub, calls[:args.paced], pause=0.0005)
            pub.flush(60)
        with Publisher(closed_port(), close_timeout=0) as down:
            result["per_call_us"]["broker_down"] = timed(down, calls[:args.calls])

        with Publisher(args.bootstrap, inferences_topic=topics[0], labels_topic=topics[1]) as pub:
            pub.log_prediction(**calls[0]) and pub.flush(10)
            base = pub.stats
            t0 = time.perf_counter()
            for kw in calls[:args.events]:
                pub.log_prediction(**kw)
            produced = time.perf_counter() - t0
            left = pub.flush(120)
            seconds = time.perf_counter() - t0
            s = pub.stats
        delivered = s.delivered - base.delivered
        result["delivery"] = {"events": args.events, "calls_per_s": round(args.events / produced),
                              "seconds": round(seconds, 3), "delivered": delivered,
                              "dropped": s.dropped - base.dropped, "failed": s.failed - base.failed,
                              "undelivered_after_flush": left, "delivered_per_s": round(delivered / seconds)}
    finally:
        for f in admin.delete_topics(topics).values():
            try:
                f.result(30)
            except Exception:
                pass

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    pc, d = result["per_call_us"], result["delivery"]
    for name in ("burst", "paced", "broker_down"):
        print(f"log_prediction {name:>11}: mean {pc[name]['mean']:6.2f} µs  p50 {pc[name]['p50']:6.2f}  "
              f"p99 {pc[name]['p99']:7.2f}  p99.9 {pc[name]['p999']:7.2f}")
    print(f"encode only           : mean {pc['encode_only']['mean']:6.2f} µs  ({result['event_bytes']} bytes per event)")
    print(f"delivery: {d['delivered']:,} of {d['events']:,} events in {d['seconds']:.2f} s = {d['delivered_per_s']:,} "
          f"delivered/s (calls at {d['calls_per_s']:,}/s, dropped {d['dropped']:,}, failed {d['failed']})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
