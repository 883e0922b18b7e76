"""A faust-streaming app that serves a model, for test_faust.py, run in its own process.

    python tests/integration/faust_scorer.py --bootstrap HOST:PORT --prefix P --requests T1 --outcomes T2 \
        --expect N --app-id ID [--timeout SECONDS]

Agent `score` reads requests ({"id", "features"}) from T1, scores them with the demo's Shuttle
model (a Hoeffding tree trained on the first 5,000 rows, then frozen) and logs each prediction
with driftline.stream.faust.FaustPublisher to P.inferences; agent `grade` reads outcomes
({"id", "label"}) from T2 and logs the labels to P.labels. Once it has logged N of each and the
publisher has nothing in flight, it prints one line `stats {...}` (PublishStats) and stops
gracefully. A hard timer exits 3 after --timeout seconds whatever faust is doing.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import threading


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--requests", required=True)
    ap.add_argument("--outcomes", required=True)
    ap.add_argument("--expect", type=int, required=True)
    ap.add_argument("--app-id", required=True)
    ap.add_argument("--datadir", required=True)
    ap.add_argument("--timeout", type=float, default=240.0)
    args = ap.parse_args()

    def hard_stop():
        print(f"faust_scorer: timeout after {args.timeout} s", flush=True)
        os._exit(3)

    timer = threading.Timer(args.timeout, hard_stop)
    timer.daemon = True
    timer.start()

    import faust

    from driftline.stream.demo import MODEL, _predict, _trained, band
    from driftline.stream.faust import FaustPublisher

    _, model = _trained()
    app = faust.App(args.app_id, broker=f"kafka://{args.bootstrap}", store="memory://", datadir=args.datadir,
                    autodiscover=False, web_enabled=False, topic_partitions=1, topic_disable_leader=True,
                    consumer_auto_offset_reset="earliest", broker_commit_interval=0.5)
    requests = app.topic(args.requests, partitions=1, value_serializer="json")
    outcomes = app.topic(args.outcomes, partitions=1, value_serializer="json")
    driftline = FaustPublisher(app, inferences_topic=f"{args.prefix}.inferences",
                               labels_topic=f"{args.prefix}.labels")
    done = {"score": 0, "grade": 0}

    async def maybe_finish() -> None:
        if done["score"] == args.expect and done["grade"] == args.expect:
            left = await driftline.flush(60)
            print("stats " + json.dumps(dataclasses.asdict(driftline.stats)) + f" left {left}", flush=True)
            os.kill(os.getpid(), signal.SIGTERM)  # the worker's own graceful shutdown

    @app.agent(requests)
    async def score(stream):
        async for req in stream:
            x = req["features"]
            pred, p = _predict(model, x)
            driftline.log_prediction(model=MODEL, features=x, prediction=pred, score=p,
                                     segment={"band": band(x)}, prediction_id=req["id"], model_version="ht-1")
            done["score"] += 1
            await maybe_finish()

    @app.agent(outcomes)
    async def grade(stream):
        async for out in stream:
            driftline.log_label(out["id"], out["label"], model=MODEL)
            done["grade"] += 1
            await maybe_finish()

    faust.Worker(app, loglevel="INFO", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    asyncio.set_event_loop(asyncio.new_event_loop())
    main()
