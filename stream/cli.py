"""`driftline` command line: see the command-line contract in docs (and DESIGN.md)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson


def _cmd_replay(args: argparse.Namespace) -> int:
    from stream.replay import TerminalProgress, replay
    from stream.settings import load_settings

    settings = load_settings(args.config)
    result = replay(settings, args.inferences, args.labels, progress=TerminalProgress())
    exposition = result.exposition()
    if args.metrics_out:
        Path(args.metrics_out).write_bytes(exposition)
    else:
        sys.stdout.buffer.write(exposition)
    if args.drift_out:
        with open(args.drift_out, "wb") as f:
            for rec in result.detections:
                f.write(orjson.dumps(rec.to_dict()) + b"\n")
    invalid = sum(result.invalid.values())
    print(
        f"replay: {result.events:,} events ({invalid:,} invalid) in {result.seconds:.2f} s, "
        f"{result.events / max(result.seconds, 1e-9):,.0f} events/s, {len(result.detections)} detections",
        file=sys.stderr,
    )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import logging
    import os

    from stream.admin import ProvisioningError
    from stream.http import parse_listen
    from stream.settings import load_settings
    from stream.worker import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(args.config)
    listen = args.listen or os.environ.get("DRIFTLINE_LISTEN") or settings.listen or "127.0.0.1:8000"
    try:
        parse_listen(listen)
    except ValueError as exc:
        print(f"driftline: {exc}", file=sys.stderr)
        return 2
    try:
        return run_worker(settings, listen)
    except ProvisioningError as exc:
        print(f"driftline: {exc}", file=sys.stderr)
        return 3


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.kafka:
        from stream.live_demo import run_live_demo

        live = run_live_demo(args.kafka, args.listen, args.out, rate=args.rate, keep_worker=args.keep_worker)
        print("\n".join(live.lines))
        return 0 if live.detection_seconds is not None else 1

    from stream.demo import run_demo

    _, report = run_demo(args.out, plot=not args.no_plot)
    print("\n".join(report.lines))
    print(f"\nfiles in {args.out}: inferences.jsonl labels.jsonl demo.yml metrics.prom drifts.jsonl"
          + (" demo.png" if report.plot else ""))
    return 0 if report.first_detection_delay is not None else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="driftline", description="Per-segment drift and accuracy monitoring for ML models.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a Kafka worker (one member of the consumer group)")
    run.add_argument("--config", required=True)
    run.add_argument("--listen", help="HOST:PORT for /metrics, /healthz, /readyz (default: DRIFTLINE_LISTEN, "
                                      "the config's listen, or 127.0.0.1:8000)")
    run.set_defaults(func=_cmd_run)

    rp = sub.add_parser("replay", help="run the detectors over JSONL files, in event-time order, without Kafka")
    rp.add_argument("--config", required=True)
    rp.add_argument("--inferences", required=True, help="inference events, one JSON object per line")
    rp.add_argument("--labels", required=True, help="label events, one JSON object per line")
    rp.add_argument("--metrics-out", help="write the Prometheus exposition here (default: stdout)")
    rp.add_argument("--drift-out", help="write one JSON line per drift detection here")
    rp.set_defaults(func=_cmd_replay)

    dp = sub.add_parser("demo", help="the built-in Shuttle demo (real data, one injected drift): replayed from "
                                      "files, or live through Kafka and a worker with --kafka")
    dp.add_argument("--out", default="out/demo", help="folder for the demo's files (default: out/demo)")
    dp.add_argument("--no-plot", action="store_true", help="skip the PNG plot (replay)")
    dp.add_argument("--kafka", metavar="BOOTSTRAP", help="publish into this Kafka and run a worker (live demo)")
    dp.add_argument("--listen", default="127.0.0.1:8000", help="the live demo worker's /metrics address")
    dp.add_argument("--rate", type=float, default=4000.0, help="live demo: inference events per second")
    dp.add_argument("--keep-worker", action="store_true", help="live demo: leave the worker running")
    dp.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from stream.settings import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"driftline: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"driftline: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
