"""The worker agrees with `driftline replay` on a backlog spread over 6 source partitions.

A serving fleet's topics after a worker outage or a first deployment: every inference, then every
label, on the default 6 partitions (real Shuttle data, accuracy drop injected in band=high).
The worker reads the partitions at whatever speed the broker gives it; replay reads one merged,
time-ordered stream. With event-time alignment (stage 1: the join's TTL on label progress, the
topic running ahead paused; stage 2: observations released in event-time order by a watermark
over the 6 sources) the two must agree on joins, counters, rolling accuracy and detections.

Two runs: the backlog read by one worker from the start, and a catch-up (the worker reads the
first half, is stopped, the second half is published meanwhile, a new worker resumes from the
checkpoints). docs/guarantees.md ("Event time") states why they are equal, not just close.
"""
from __future__ import annotations

import time

import orjson
import pytest

from driftline.stream.admin import ensure_topics
from driftline.stream.demo import demo_events
from driftline.stream.replay import replay
from driftline.stream.settings import load_settings
from tests.integration.harness import (
    CLI,
    WorkerProcess,
    consume_all,
    event_time_report,
    fleet_counts,
    fleet_metrics,
    parse,
    producer,
    publish,
    summed,
    total,
    unique_prefix,
    wait_for,
    write_config,
)
from tests.integration.slow_assign import FIRST_BATCH

pytestmark = pytest.mark.integration

ROWS = 12_000  # 12,000 s of event time: 20 times the label TTL below
DRIFT_ROW = 6_000
# No label for every 7th prediction (before the last 1,000 rows): they must expire, on both sides.
def labelled(i: int) -> bool:
    return i % 7 != 3 or i >= ROWS - 1_000


MODELS = """\
  shuttle:
    task: classification
    segments: [band]
    max_segments: 10
    features: {f1: numeric, f5: numeric, f7: numeric, f9: numeric}
    accuracy_window: 500
    label_ttl: 10m
    drift_hold: 10m
"""
COMPARED = ("driftline_events_total", "driftline_labeled_total", "driftline_correct_total",
            "driftline_drift_detected_total", "driftline_label_delay_seconds_count")


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("event-time-data")
    inferences, labels, _ = demo_events(rows_limit=ROWS, drift_row=DRIFT_ROW)
    labels = [lab for i, lab in enumerate(labels) if labelled(i)]
    (tmp / "inferences.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in inferences))
    (tmp / "labels.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in labels))
    return dict(inferences=inferences, labels=labels, tmp=tmp)


def expected(config, stream):
    result = replay(load_settings(config), stream["tmp"] / "inferences.jsonl", stream["tmp"] / "labels.jsonl")
    samples = parse(result.exposition().decode())
    return result, samples


def compared(samples: dict) -> dict:
    return {k: v for k, v in samples.items() if k[0] in COMPARED and v}


def short_of(got: dict, want: dict) -> dict:
    """The compared series of replay's the fleet has not reached yet: (fleet, replay)."""
    return {k: (got.get(k, 0.0), v) for k, v in compared(want).items() if got.get(k, 0.0) < v}


def settle(ws, want, timeout: float = 120.0) -> tuple[dict, str]:
    """Wait for what is compared, not for a proxy of it: every compared series at least at
    replay's value and nothing held in a bank, then the compared values unchanged over 3 s more
    (a count over replay's, still in flight, would show up). Returns the fleet's samples and its
    event-time figures; times out naming what is short, with those figures."""
    state: dict = {}

    def reached():
        scraped = fleet_metrics(ws)
        got = summed(scraped)
        state.update(got=got, report=event_time_report(scraped))
        return not short_of(got, want) and total(got, "driftline_observations_held") == 0

    try:
        deadline = time.monotonic() + timeout
        while True:
            wait_for("every compared count reached, nothing held", reached, max(deadline - time.monotonic(), 1.0), ws)
            before = compared(state["got"])
            time.sleep(3.0)
            if reached() and compared(state["got"]) == before:
                return state["got"], state["report"]
            if time.monotonic() > deadline:
                raise AssertionError(f"the compared counts kept changing for {timeout:.0f} s")
    except AssertionError as exc:
        short = short_of(state.get("got", {}), want)
        raise AssertionError(f"{exc}\nshort of replay (fleet, replay): {short}\n{state.get('report')}") from None


def run_and_compare(tmp, kafka_bootstrap, stream, phases, fleet: int = 1, entry=CLI):
    prefix = unique_prefix()
    config = write_config(tmp / "driftline.yml", kafka_bootstrap, prefix, MODELS, partitions=6)
    topics = {k: f"{prefix}.{k}" for k in ("inferences", "labels", "drift-events")}
    result, want = expected(config, stream)
    # The topics exist (6 partitions each) before the backlog is published: published first, it
    # would auto-create them with the broker's default of 1 partition, and a worker finding them
    # keeps that count.
    _, partitions = ensure_topics(load_settings(config))
    assert partitions[topics["inferences"]] == partitions[topics["labels"]] == 6
    p = producer(kafka_bootstrap)
    workers = []
    try:
        for n, (infs, labs) in enumerate(phases):
            # The backlog: all of this phase's inferences, then all its labels, before a worker reads.
            publish(p, topics["inferences"], infs)
            publish(p, topics["labels"], labs)
            assert p.flush(60) == 0
            ws = [WorkerProcess(config, tmp, f"worker-{n}-{k}", entry=entry).start() for k in range(fleet)]
            workers.append(ws)
            n_inf = sum(len(i) for i, _ in phases[:n + 1])
            n_lab = sum(len(lab) for _, lab in phases[:n + 1])
            wait_for("every event of the phase read", lambda: (
                total(m := fleet_counts(ws), "driftline_events_total", kind="inference",
                      outcome="accepted") >= n_inf
                and total(m, "driftline_events_total", kind="label", outcome="accepted") >= n_lab), 240, ws)
            if n < len(phases) - 1:
                # Stopped mid-stream; the next phase is published meanwhile.
                assert [w.terminate() for w in ws] == [0] * fleet
        ws = workers[-1]
        # Everything read; the last observations leave the stage-2 buffers once all sources are idle,
        # and reach each bank on the worker owning it (segments' banks and `__all__`'s may differ).
        got, report = settle(ws, want)
    except BaseException:  # a failed wait must not leave the workers running
        for w in (w for ws in workers for w in ws):
            w.kill9()
        raise
    assert [w.terminate() for w in ws] == [0] * fleet
    # Detections and explanation refreshes (issue 16) share the drift-events topic, as in replay.
    events = [orjson.loads(m.value()) for m in consume_all(kafka_bootstrap, topics["drift-events"], len(result.records))]
    return dict(result=result, want=want, got=got, events=events, workers=workers, report=report)


def compare(run):
    want, got, report = run["want"], run["got"], run["report"]
    print(f"\nthe fleet's event-time figures:\n{report}")
    for name in COMPARED:
        mine = {k: v for k, v in got.items() if k[0] == name and v}
        theirs = {k: v for k, v in want.items() if k[0] == name and v}
        assert mine == theirs, f"{name} differs from replay\n{report}"
    # Rolling accuracy (500 outcomes): equal only if every segment saw its outcomes in replay's order.
    for (name, labels), v in want.items():
        if name == "driftline_accuracy":
            assert got[(name, labels)] == pytest.approx(v, abs=1e-12), f"{labels}\n{report}"
    # Every record on the drift-events topic (detections and their explanations), field for field
    # but the worker's `source` id: statistics too, which depend on the order the detector saw.
    key = lambda d: orjson.dumps({k: v for k, v in d.items() if k != "source"}, option=orjson.OPT_SORT_KEYS)
    assert sorted(map(key, run["events"])) == sorted(key(r.to_dict()) for r in run["result"].records), report
    assert run["result"].detections, "the drift must be detected at all"
    # Nothing behind the watermark: the order was never broken.
    assert total(got, "driftline_observations_late_total") == 0, report


def test_backlog_on_six_partitions_agrees_with_replay(tmp_path, kafka_bootstrap, stream):
    run = run_and_compare(tmp_path, kafka_bootstrap, stream, [(stream["inferences"], stream["labels"])])
    compare(run)
    expired = total(run["want"], "driftline_events_total", kind="inference", outcome="expired")
    assert expired == total(run["got"], "driftline_events_total", kind="inference", outcome="expired") > 0
    # The topic running ahead was paused for alignment, and it said so.
    assert total(run["got"], "driftline_alignment_paused_seconds_total") > 0


def test_catch_up_after_a_stop_agrees_with_replay(tmp_path, kafka_bootstrap, stream):
    half = stream["inferences"][ROWS // 2]["timestamp"]
    first = ([e for e in stream["inferences"] if e["timestamp"] < half], [e for e in stream["labels"] if e["timestamp"] < half])
    second = ([e for e in stream["inferences"] if e["timestamp"] >= half], [e for e in stream["labels"] if e["timestamp"] >= half])
    run = run_and_compare(tmp_path, kafka_bootstrap, stream, [first, second])
    compare(run)


def test_catch_up_whose_first_batch_is_full_agrees_with_replay(tmp_path, kafka_bootstrap, stream):
    """The catch-up above, with the first `consume()` after each assignment returning a full
    batch (a pause in the assignment callback, as slow work there gives), processed before the
    alignment has looked at any topic. The stopped worker's intakes ended with both topics caught
    up (idle); a restored intake that believed so still would let the label clock follow that
    batch of inferences, expiring the predictions whose labels wait unread in the backlog."""
    half = stream["inferences"][ROWS // 2]["timestamp"]
    first = ([e for e in stream["inferences"] if e["timestamp"] < half], [e for e in stream["labels"] if e["timestamp"] < half])
    second = ([e for e in stream["inferences"] if e["timestamp"] >= half], [e for e in stream["labels"] if e["timestamp"] >= half])
    run = run_and_compare(tmp_path, kafka_bootstrap, stream, [first, second],
                          entry=("tests.integration.slow_assign", "1.0"))
    # The restarted worker read a full first batch (worker.batch: 2,000 messages by default).
    restarted = run["workers"][1][0].log_path.read_text()
    read = [int(line.rsplit(" ", 1)[1]) for line in restarted.splitlines() if line.startswith(FIRST_BATCH)]
    assert read and read[0] >= 1_000, read
    compare(run)


def test_backlog_shared_by_two_workers_agrees_with_replay(tmp_path, kafka_bootstrap, stream):
    """Banks and intakes on different workers: progress travels between them only as
    heartbeats on the observations topic, and the group rebalances while the backlog is read
    (buffers move with the checkpoints)."""
    run = run_and_compare(tmp_path, kafka_bootstrap, stream, [(stream["inferences"], stream["labels"])], fleet=2)
    compare(run)
