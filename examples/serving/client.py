"""Traffic for the example app: customers ask for predictions; their outcomes come back later.

    .venv/bin/python -m examples.serving.client --url http://127.0.0.1:8080 --requests 12000 --drift-after 6000

From request `--drift-after` on, region apac changes (see churn.py): watch driftline's
accuracy for segment region=apac fall and its drift detections fire, while eu and us stay put.
Outcomes are posted to /feedback in batches of `--label-batch`, as a nightly job would.
"""
from __future__ import annotations

import argparse
import sys
import time

import httpx

from examples.serving import churn


def run(url: str, requests: int, drift_after: int | None, label_batch: int = 200, seed: int = 2026) -> dict:
    sent = 0
    pending: list[dict] = []
    t0 = time.perf_counter()
    with httpx.Client(base_url=url, timeout=10) as http:
        for features, churned in churn.customers(seed, requests, drift_after):
            r = http.post("/predict", json=features)
            r.raise_for_status()
            pending.append({"prediction_id": r.json()["prediction_id"], "churned": churned})
            sent += 1
            if len(pending) >= label_batch:
                http.post("/feedback", json=pending).raise_for_status()
                pending = []
            if sent % 2000 == 0:
                print(f"{sent} predictions, {sent / (time.perf_counter() - t0):.0f}/s", file=sys.stderr)
        if pending:
            http.post("/feedback", json=pending).raise_for_status()
    return {"predictions": sent, "seconds": round(time.perf_counter() - t0, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--requests", type=int, default=12_000)
    ap.add_argument("--drift-after", type=int, default=6_000, help="request number where apac drifts (-1: never)")
    ap.add_argument("--label-batch", type=int, default=200)
    args = ap.parse_args(argv)
    print(run(args.url, args.requests, None if args.drift_after < 0 else args.drift_after, args.label_batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
