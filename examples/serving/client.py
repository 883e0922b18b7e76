"""Traffic for the example app: customers ask for predictions; their outcomes come back later.

    .venv/bin/python -m examples.serving.client --url http://127.0.0.1:8080 --requests 12000 --drift-after 6000 \
        --worker http://127.0.0.1:8000

From request `--drift-after` on, region apac changes (see churn.py): watch driftline's
accuracy for segment region=apac fall and its drift detections fire, while eu and us stay put.
Outcomes are posted to /feedback in batches of `--label-batch`, as a nightly job would.

The client first waits (at most `--wait` seconds) until the app answers and, with `--worker`,
until that driftline worker is ready (so the worker, not the broker's auto-creation, makes the
topics); afterwards it waits until the worker has counted every label it sent, so what its
/metrics shows next is the whole run.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

import httpx

from examples.serving import churn


def wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    """Poll `check` (connection errors count as not yet) until true, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SystemExit(f"client: gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(min(0.25, remaining))


def labelled(worker: str, model: str = churn.MODEL) -> float:
    """The worker's driftline_labeled_total for the model's __all__ segment (0 before the first)."""
    text = httpx.get(f"{worker}/metrics", timeout=5).text
    prefix = "driftline_labeled_total{"
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix) and f'model="{model}"' in line and 'segment="__all__"' in line)


def run(url: str, requests: int, drift_after: int | None, label_batch: int = 200, seed: int = 2026,
        worker: str | None = None, wait: float = 120.0) -> dict:
    wait_until(f"the app at {url}", lambda: httpx.get(f"{url}/metrics", timeout=2).status_code == 200, wait)
    if worker:
        wait_until(f"the worker at {worker}", lambda: httpx.get(f"{worker}/readyz", timeout=2).status_code == 200, wait)
        already = labelled(worker)
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
    result = {"predictions": sent, "seconds": round(time.perf_counter() - t0, 2)}
    if worker:
        wait_until(f"the worker to count {sent} labels", lambda: labelled(worker) >= already + sent, wait)
        result["counted_by_worker_after_s"] = round(time.perf_counter() - t0 - result["seconds"], 2)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--requests", type=int, default=12_000)
    ap.add_argument("--drift-after", type=int, default=6_000, help="request number where apac drifts (-1: never)")
    ap.add_argument("--label-batch", type=int, default=200)
    ap.add_argument("--worker", help="a driftline worker's URL: wait until it is ready, and at the end until it has "
                                     "counted every label sent")
    ap.add_argument("--wait", type=float, default=120.0, help="seconds each wait may take (default 120)")
    args = ap.parse_args(argv)
    print(run(args.url, args.requests, None if args.drift_after < 0 else args.drift_after, args.label_batch,
              worker=args.worker, wait=args.wait))
    return 0


if __name__ == "__main__":
    sys.exit(main())
