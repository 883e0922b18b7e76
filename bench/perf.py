"""driftline's speed, measured: throughput against the ceiling, latency, memory, scrape cost.

    .venv/bin/python bench/perf.py [--quick] [--bootstrap HOST:PORT] [--out bench/results]

Starts its own Kafka broker (deploy/local/kafka, free ports, a temporary state folder) unless
--bootstrap names one. Every figure that depends on the machine is also reported as a ratio to
a ceiling measured in the same run on the same machine: these machines are shared and noisy.

- ceiling: a bare confluent-kafka `consume(1000)` + `orjson.loads` loop over the same topics
  and events the workers read (the inference and label events of the demo stream);
- faust: the same loop as a faust-streaming agent (the runtime the design first named);
- quix: a quix-streams app on both topics: decode, and a per-key count in its changelog-backed
  state store (the `bench` extra installs it);
- River floor: in process, `orjson.loads` of the same events and exactly the River detector
  updates the demo config's bank makes for them (recorded from a real intake + bank, replayed on
  fresh clones of its detectors): what one process could do if everything but River were free;
- replay: `driftline replay` of the same events in a process of its own: the core (decode,
  event-time merge, join, routing, the bank) without Kafka and without the worker's stage-2
  buffer, so the gap between the floor and the worker splits into what the core costs and what
  the distributed worker adds (`replay_to_floor`, `worker_to_replay_per_cpu_s`);
- workers: 1, 2 and 3 `driftline run` processes in one consumer group, demo config, reading the
  same backlog; events/s from the first partition assignment to the last label accounted for;
- scaling: 2 workers against 1 on backlogs of 100k and 300k pairs, 1, 2, 2, 1 workers in turn:
  how the 2-to-1 ratio moves with the backlog's length (a fixed cost per run, such as the wait
  for the other worker's commits at the end, weighs less on a longer one);
- latency: publish time -> the event counted on /metrics, at a fixed offered load, one worker;
- memory: RSS growth of one process per monitored segment (1k and 10k segments);
- scrape: /metrics render time and size at 10k and 100k series.

Writes OUT/perf.json and OUT/perf.png, and prints a markdown table for the README. perf.json's
top level carries the figures of this one run: `ceiling_events_per_s`, `river_floor_events_per_s`,
`worker_events_per_s` (one worker, demo config, backlog) and the ratios `worker_to_floor`,
`worker_to_ceiling`, `floor_to_ceiling`, `replay_to_floor`, `worker_to_replay_per_cpu_s`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import orjson
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from driftline.stream.demo import DEMO_CONFIG, demo_events  # noqa: E402
from driftline.stream.live_demo import scrape, total  # noqa: E402  (the live demo's /metrics reader)
from driftline.stream.settings import parse_settings, prefixed_topics  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_cpu_seconds(pid: int) -> float | None:
    """A process's CPU time so far (user + system, every thread), from /proc; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: proc(5)'s fields 14, 15


def log(msg: str) -> None:
    print(f"perf: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ broker
class Broker:
    def __init__(self, bootstrap: str | None):
        self.bootstrap = bootstrap
        self.env = None

    def __enter__(self) -> "Broker":
        if self.bootstrap is None:
            self.state = tempfile.mkdtemp(prefix="driftline-perf-")
            self.env = {**os.environ, "DRIFTLINE_STATE": self.state, "KAFKA_PORT": str(free_port()),
                        "KAFKA_CONTROLLER_PORT": str(free_port())}
            subprocess.run([str(REPO / "deploy/local/kafka"), "start"], env=self.env, check=True)
            self.bootstrap = f"127.0.0.1:{self.env['KAFKA_PORT']}"
        return self

    def cpu_seconds(self) -> float | None:
        """The broker's CPU time so far (user + system), when this run started it: with the
        workers' own CPU it says how much of the machine a fleet could have had."""
        if self.env is None:
            return None
        try:
            pid = int((Path(self.state) / "kafka" / "kafka.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return process_cpu_seconds(pid)

    def __exit__(self, *exc) -> None:
        if self.env is not None:
            subprocess.run([str(REPO / "deploy/local/kafka"), "stop"], env=self.env, check=False)
            shutil.rmtree(self.state, ignore_errors=True)


def demo_raw(rows: int) -> tuple[list[bytes], list[bytes]]:
    """The demo's events on a live clock; past the data's 44,097 rows it repeats them with new ids."""
    base_inf, base_lab, _ = demo_events(rows_limit=min(rows, 44_000), drift_row=min(rows, 44_000) // 2)
    now = time.time()
    inf, lab = [], []
    for i in range(rows):
        a, b = dict(base_inf[i % len(base_inf)]), dict(base_lab[i % len(base_lab)])
        a["prediction_id"] = b["prediction_id"] = f"e{i:08d}"
        a["timestamp"] = now + i * 0.001
        b["timestamp"] = now + i * 0.001 + 0.5
        inf.append(orjson.dumps(a))
        lab.append(orjson.dumps(b))
    return inf, lab


# What fill() wrote under each prefix: a throughput run publishes it again, at once, to input
# topics of its own (see worker_throughput).
RAW_BACKLOGS: dict[str, tuple[list[bytes], list[bytes]]] = {}


def create_inputs(bootstrap: str, prefix: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(f"{prefix}.{t}", partitions, 1) for t in ("inferences", "labels")]).values():
        f.result()


def fill(bootstrap: str, prefix: str, partitions: int, inf: list[bytes], lab: list[bytes]) -> None:
    create_inputs(bootstrap, prefix, partitions)
    RAW_BACKLOGS[prefix] = (inf, lab)
    publish_raw(bootstrap, prefix, inf, lab)


def publish_raw(bootstrap: str, prefix: str, inf: list[bytes], lab: list[bytes], at_once: bool = False) -> None:
    """Write the events to PREFIX.inferences and PREFIX.labels (keyed by prediction_id). `at_once`:
    in one transaction, so that a read_committed consumer (every worker) sees none of them until
    all are there: a backlog that appears whole, at the commit."""
    from confluent_kafka import Producer

    conf = {"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.num.messages": 10000, "compression.type": "lz4"}
    if at_once:
        conf |= {"transactional.id": f"perf-fill-{uuid.uuid4().hex[:8]}", "transaction.timeout.ms": 300_000}
    p = Producer(conf)
    if at_once:
        p.init_transactions(60)
        p.begin_transaction()
    for topic, raws in ((f"{prefix}.inferences", inf), (f"{prefix}.labels", lab)):
        for i, raw in enumerate(raws):
            key = orjson.loads(raw)["prediction_id"].encode()
            while True:
                try:
                    p.produce(topic, key=key, value=raw)
                    break
                except BufferError:  # the local queue is full (a slow broker): let it drain
                    p.poll(0.1)
            if i % 5000 == 0:
                p.poll(0)
    if at_once:
        p.commit_transaction(120)
    else:
        p.flush(120)


# ------------------------------------------------------------------------------------ ceiling
CEILING = r"""
import sys, time, uuid, orjson
from confluent_kafka import Consumer
bootstrap, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Consumer({"bootstrap.servers": bootstrap, "group.id": str(uuid.uuid4()), "auto.offset.reset": "earliest",
              "enable.auto.commit": False})
c.subscribe([prefix + ".inferences", prefix + ".labels"])
got, t0 = 0, None
while got < n:
    msgs = c.consume(1000, 1.0)
    if msgs and t0 is None:
        t0 = time.perf_counter(); cpu0 = time.process_time()
    for m in msgs:
        if m.error() is None:
            orjson.loads(m.value()); got += 1
print(got / (time.perf_counter() - t0), got / (time.process_time() - cpu0))
"""

FAUST = r"""
import os, sys, time, uuid, orjson
import faust
bootstrap, prefix, n, parts = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
app = faust.App(str(uuid.uuid4()), broker="kafka://" + bootstrap, store="memory://", web_enabled=False,
                autodiscover=False, topic_partitions=parts, topic_disable_leader=True,
                consumer_auto_offset_reset="earliest", datadir=os.environ["FAUST_DATADIR"])
topic = app.topic(prefix + ".inferences", prefix + ".labels", key_serializer="raw", value_serializer="raw")
st = {"n": 0, "t0": None}
@app.agent(topic)
async def count(stream):
    async for v in stream:
        if st["t0"] is None:
            st["t0"] = time.perf_counter()
        orjson.loads(v); st["n"] += 1
        if st["n"] >= n:
            print(f"RESULT={st['n'] / (time.perf_counter() - st['t0']):.1f}", flush=True); os._exit(0)
sys.argv = [sys.argv[0], "worker", "-l", "warn"]
app.main()
"""


def ceiling(bootstrap: str, prefix: str, n: int) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", CEILING, bootstrap, prefix, str(n)], capture_output=True, text=True,
                         timeout=600, check=True)
    wall, cpu = map(float, out.stdout.split())
    return wall, cpu


def faust_ceiling(bootstrap: str, prefix: str, n: int, partitions: int) -> float | None:
    import importlib.util

    if importlib.util.find_spec("faust") is None:  # the `bench` extra
        return None
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run([sys.executable, "-c", FAUST, bootstrap, prefix, str(n), str(partitions)],
                             capture_output=True, text=True, timeout=900, env={**os.environ, "FAUST_DATADIR": d})
    # faust redirects stdout into its logger, which may split the print: search the whole output.
    m = re.search(r"RESULT=([0-9]+(?:\.[0-9]+)?)", out.stdout + out.stderr)
    if m:
        return float(m.group(1))
    log(f"faust run failed: {out.stderr[-500:]}")
    return None


QUIX = r"""
import os, sys, time, uuid, orjson
from quixstreams import Application
bootstrap, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
app = Application(broker_address=bootstrap, consumer_group="quix-" + uuid.uuid4().hex[:8], auto_offset_reset="earliest",
                  state_dir=os.environ["QUIX_STATE_DIR"], loglevel="WARNING")
st = {"n": 0, "t0": None}

def count(value, state):
    # decode, and a per-key count in the changelog-backed store (the key is the prediction_id)
    if st["t0"] is None:
        st["t0"] = time.perf_counter()
    orjson.loads(value)
    state.set("n", state.get("n", 0) + 1)
    st["n"] += 1
    if st["n"] == n:
        st["took"] = time.perf_counter() - st["t0"]
        app.stop()

for name in ("inferences", "labels"):
    topic = app.topic(prefix + "." + name, key_deserializer="bytes", value_deserializer="bytes")
    app.dataframe(topic).update(count, stateful=True)
app.run()
print(f"RESULT={st['n'] / st['took']:.1f}", flush=True)
"""


def quix_ceiling(bootstrap: str, prefix: str, n: int) -> float | None:
    import importlib.util

    if importlib.util.find_spec("quixstreams") is None:  # the `bench` extra
        return None
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run([sys.executable, "-c", QUIX, bootstrap, prefix, str(n)], capture_output=True, text=True,
                             timeout=900, env={**os.environ, "QUIX_STATE_DIR": d})
    m = re.search(r"RESULT=([0-9]+(?:\.[0-9]+)?)", out.stdout)
    if m:
        return float(m.group(1))
    log(f"quix-streams run failed: {out.stderr[-800:]}")
    return None


# ------------------------------------------------------------------------------------ workers
def worker_config(path: Path, bootstrap: str, prefix: str, group: str, partitions: int, baseline: bool = False,
                  models: str | None = None, worker: str = "") -> Path:
    # The backlog's two input topics, everything else the group's own.
    names = {**prefixed_topics(group), "inferences": f"{prefix}.inferences", "labels": f"{prefix}.labels"}
    topics = "{" + ", ".join(f"{k}: {v}" for k, v in names.items()) + "}"
    config = models or DEMO_CONFIG  # models: another config's `models:` block (the LLM rows)
    if baseline:  # the demo's training profile: PSI/JS/KS and data quality on every event too
        from driftline.stream.demo import BASELINE_FILE, demo_config, write_baseline

        write_baseline(path.parent)
        config = demo_config(BASELINE_FILE)
    body = config.split("models:", 1)[1]
    path.write_text(f"kafka:\n  bootstrap: {bootstrap}\n  group_id: {group}\n  partitions: {partitions}\n"
                    f"  topics: {topics}\n{worker}models:{body}")
    return path


class Workers:
    def __init__(self, config: Path, n: int, logdir: Path, pythonpath: str | None = None):
        self.procs, self.urls = [], []
        # pythonpath: run another tree's worker (the figure before a change, in the same run).
        env = {**os.environ, "PYTHONPATH": pythonpath} if pythonpath else None
        for i in range(n):
            port = free_port()
            logf = open(logdir / f"worker{i}.log", "wb")
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "driftline.stream.cli", "run", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
                cwd=REPO, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, env=env))
            self.urls.append(f"http://127.0.0.1:{port}")

    def samples(self, timeout: float = 5.0) -> list[tuple[dict, float]]:
        """Each worker's /metrics samples (empty when it did not answer within `timeout`) and the
        scrape's seconds."""
        out = []
        for url in self.urls:
            started = time.perf_counter()
            try:
                m = scrape(url + "/metrics", timeout=timeout)
            except OSError:
                m = {}
            out.append((m, time.perf_counter() - started))
        return out

    def memory(self) -> dict:
        """The largest worker's peak RSS (MiB) and the fleet's page faults so far: memory the kernel
        hands a process is zeroed at its first touch, which costs CPU, not only memory."""
        peak, faults = 0.0, 0
        for p in self.procs:
            try:
                status = Path(f"/proc/{p.pid}/status").read_text()
                stat = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            hwm = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
            peak = max(peak, int(hwm.split()[1]) / 1024)
            faults += int(stat[7]) + int(stat[9])  # minflt and majflt (fields 10 and 12 of proc(5)'s stat)
        return {"peak_rss_mib": peak, "page_faults": faults}

    def cpu_seconds(self) -> float:
        """The fleet's CPU so far (user + system, every thread), read from /proc: not from /metrics,
        whose body is cached (stream/http.py, at least 1 s), so its process_cpu_seconds_total lags."""
        return sum(process_cpu_seconds(p.pid) or 0.0 for p in self.procs)

    def sum(self, name: str, **labels) -> float:
        out = 0.0
        for url in self.urls:
            try:
                out += total(scrape(url + "/metrics"), name, **labels)
            except OSError:
                pass
        return out

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()


class WorkerDied(RuntimeError):
    """A worker process exited during a throughput run."""


def worker_throughput(bootstrap: str, prefix: str, n_pairs: int, partitions: int, k: int, logdir: Path,
                      baseline: bool = False, pythonpath: str | None = None, models: str | None = None,
                      worker: str = "", broker: Broker | None = None,
                      on_settled: Callable[[list[int]], None] | None = None) -> dict:
    """`on_settled(pids)`: called with the workers' process ids once the group has settled, before
    the backlog is published (bench/perf_record.py attaches its sampler there)."""
    group = f"perf-{uuid.uuid4().hex[:8]}"
    # The backlog fill() wrote under `prefix` is published again to empty input topics of this
    # run's own, at once, after the group has settled: every worker starts from the same point
    # (the first worker to join no longer reads alone while the others join: that head start,
    # uncounted, made 2 workers look 2.35x as fast as 1 on 2 cores). Without it (a prefix fill()
    # did not write) the backlog is already there and what was read before the group settled is
    # not counted.
    raw = RAW_BACKLOGS.get(prefix)
    if raw is not None:
        create_inputs(bootstrap, group, partitions)
    inputs = group if raw is not None else prefix
    cfg = worker_config(logdir / f"{group}.yml", bootstrap, inputs, group, partitions, baseline, models, worker)
    ws = Workers(cfg, k, logdir, pythonpath)
    try:
        deadline = time.time() + 120
        while not all_assigned(ws, partitions, k):
            if time.time() > deadline:
                raise RuntimeError("workers did not share every partition")
            time.sleep(0.05)
        if on_settled is not None:
            on_settled([proc.pid for proc in ws.procs])
        if raw is not None:
            publish_raw(bootstrap, group, *raw, at_once=True)
        t0 = time.perf_counter()
        done0 = ws.sum("driftline_labeled_total", segment="__all__")
        cpu0, broker0 = ws.cpu_seconds(), broker.cpu_seconds() if broker else None
        # Also seen while counting: the most observations the banks held at once (a backlog's
        # event-time buffers), and the slowest /metrics scrape (a render waiting for the loop).
        held_peak, slowest_scrape = 0.0, 0.0
        while True:
            scraped = ws.samples()
            slowest_scrape = max([slowest_scrape] + [s for _, s in scraped])
            if sum(total(m, "driftline_labeled_total", segment="__all__") for m, _ in scraped) >= n_pairs:
                break
            held_peak = max(held_peak, sum(total(m, "driftline_observations_held") for m, _ in scraped))
            if time.perf_counter() - t0 > 900:
                raise RuntimeError("workers did not finish within 900 s")
            dead = [i for i, p in enumerate(ws.procs) if p.poll() is not None]
            if dead:  # a crashed worker never finishes: say so now, not after 900 s
                tail = (logdir / f"worker{dead[0]}.log").read_text(errors="replace").strip().splitlines()[-1:]
                raise WorkerDied(f"worker {dead[0]} exited with {ws.procs[dead[0]].returncode}: {' '.join(tail)[:300]}")
            time.sleep(0.1)
        took = time.perf_counter() - t0
        cpu = ws.cpu_seconds()  # the workers' CPU: steadier than wall time here
        # How much of the machine the fleet and the broker used while counted (cores).
        cores = {"worker_cores": (cpu - cpu0) / took}
        if broker0 is not None and broker.cpu_seconds() is not None:
            cores["broker_cores"] = (broker.cpu_seconds() - broker0) / took
        # Where the loop waited: input paused by the event-time alignment, and commit rounds.
        waits = {"paused_align_s": ws.sum("driftline_alignment_paused_seconds_total", reason="align"),
                 "paused_skew_s": ws.sum("driftline_alignment_paused_seconds_total", reason="skew"),
                 "checkpoint_rounds": ws.sum("driftline_checkpoints_total", outcome="ok"),
                 # Applied out of event-time order: where the worker may differ from replay (a
                 # figure that comes with any is a fast answer to another question).
                 "late_observations": ws.sum("driftline_observations_late_total"),
                 "held_peak": held_peak, "slowest_scrape_s": slowest_scrape, **ws.memory()}
    finally:
        ws.stop()
    counted = 2 * (n_pairs - done0)
    if counted < 0.2 * 2 * n_pairs:
        # Most of the backlog went before the group settled (small runs): no figure beats a wrong one.
        log(f"{k} worker(s): the backlog was nearly done before the group settled; no figure (run without --quick)")
        return {"workers": k, "events": counted, "seconds": took, "events_per_s": None, "events_per_s_per_worker": None}
    rate = counted / took
    # Published at once: all the work came after t0, so its CPU is the window's (start-up and the
    # wait for the fill left out); otherwise the workers' whole CPU, start-up included.
    cpu = cpu - cpu0 if raw is not None else cpu
    return {"workers": k, "events": counted, "seconds": took, "events_per_s": rate,
            "events_per_s_per_worker": rate / k, "cpu_seconds": cpu, "events_per_cpu_s": 2 * n_pairs / cpu, **waits,
            **cores}


SCALING_SIZES, SCALING_SIZES_QUICK = (100_000, 300_000), (20_000, 60_000)  # pairs
SCALING_ORDER = (1, 2, 2, 1)  # workers per run: each count both first and last, so a drift of the machine evens out


def scaling(broker: Broker, partitions: int, logdir: Path, sizes: tuple[int, ...],
            filled: dict[int, str] | None = None) -> list[dict]:
    """2 workers against 1 on backlogs of each size in `sizes` (pairs), SCALING_ORDER in turn on
    each: how the 2-to-1 ratio moves with the backlog's length. Each size's backlog is written
    once (`filled`: sizes already written, and their prefixes)."""
    out = []
    for rows in sizes:
        prefix = (filled or {}).get(rows)
        if prefix is None:
            prefix = f"perf-{uuid.uuid4().hex[:8]}"
            fill(broker.bootstrap, prefix, partitions, *demo_raw(rows))
        runs = [worker_throughput(broker.bootstrap, prefix, rows, partitions, k, logdir, broker=broker)
                for k in SCALING_ORDER]
        by = {k: [r for r in runs if r["workers"] == k and r["events_per_s"]] for k in (1, 2)}
        if not by[1] or not by[2]:
            log(f"scaling, {rows:,} pairs: no figure (a run finished before its group settled)")
            continue
        def mean(k: int, key: str) -> float:
            return statistics.mean(r[key] for r in by[k])

        figure = {"rows": rows, "runs": runs,
                  "one_events_per_s": mean(1, "events_per_s"), "two_events_per_s": mean(2, "events_per_s"),
                  "one_events_per_cpu_s": mean(1, "events_per_cpu_s"), "two_events_per_cpu_s": mean(2, "events_per_cpu_s"),
                  "one_seconds": mean(1, "seconds"), "two_seconds": mean(2, "seconds")}
        figure["two_to_one"] = figure["two_events_per_s"] / figure["one_events_per_s"]
        figure["two_to_one_per_cpu_s"] = figure["two_events_per_cpu_s"] / figure["one_events_per_cpu_s"]
        log(f"scaling, {rows:,} pairs: 2 workers {figure['two_to_one']:.2f}x one "
            f"({figure['two_to_one_per_cpu_s']:.2f}x per CPU s)")
        out.append(figure)
    return out


def scaling_rows(figures: list[dict] | None) -> list[str]:
    if not figures:
        return []
    cells = "; ".join(f"{f['rows']:,} pairs: {f['two_events_per_s']:,.0f} / {f['one_events_per_s']:,.0f} events/s "
                      f"in {f['two_seconds']:.1f} / {f['one_seconds']:.1f} s" for f in figures)
    ratios = ", ".join(f"{f['two_to_one']:.2f}x ({f['two_to_one_per_cpu_s']:.2f}x per CPU s)" for f in figures)
    return [f"| 2 workers / 1 worker by backlog length (runs of {', '.join(map(str, SCALING_ORDER))} workers in "
            f"turn, means) | {cells} | {ratios} |"]


def transactions_cost(bootstrap: str, prefix: str, rows: int, partitions: int, logdir: Path, rounds: int = 2) -> dict:
    """One worker on the same backlog with `worker.exactly_once` off and on (the default),
    alternating (off, on, off, on, ...) so that the machine's drift hits both alike; the figure
    is the ratio of the medians, events/s and events per CPU second."""
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(rounds):
        for mode in ("off", "on"):
            worker = f"worker: {{exactly_once: {'true' if mode == 'on' else 'false'}}}\n"
            r = worker_throughput(bootstrap, prefix, rows, partitions, 1, logdir, worker=worker)
            if r["events_per_s"] is None:
                raise RuntimeError("the backlog was nearly done before the worker settled: run without --quick")
            runs[mode].append(r)
            log(f"1 worker, exactly_once {mode}: {r['events_per_s']:,.0f} events/s, {r['events_per_cpu_s']:,.0f} per CPU s")

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[mode])

    out = {"rows": rows, "partitions": partitions, "rounds": rounds, "runs": runs}
    for key in ("events_per_s", "events_per_cpu_s"):
        out[f"{key}_off"], out[f"{key}_on"] = median("off", key), median("on", key)
        out[f"{key}_on_to_off"] = out[f"{key}_on"] / out[f"{key}_off"]
    return out


def commit_wait(bootstrap: str, prefix: str, rows: int, partitions: int, logdir: Path, before: str,
                latency_rows: int) -> dict:
    """Where an exactly-once worker waits (issue 18c), this tree against the tree `before` in the
    same run, alternating (before, after) per figure so that the machine's drift hits both alike:
    1 worker and 2 workers on the backlog (events/s, events per CPU second, input paused by the
    alignment, commit rounds), and publish -> counted at 1,000 events/s."""
    out: dict = {"rows": rows, "partitions": partitions, "before": {}, "after": {}}
    for name, figure in (("one", lambda pp: worker_throughput(bootstrap, prefix, rows, partitions, 1, logdir,
                                                              pythonpath=pp)),
                         ("two", lambda pp: worker_throughput(bootstrap, prefix, rows, partitions, 2, logdir,
                                                              pythonpath=pp)),
                         ("latency", lambda pp: latency(bootstrap, latency_rows, 1000.0, logdir, pythonpath=pp))):
        for tree, pp in (("before", before), ("after", None)):
            try:
                out[tree][name] = figure(pp)
            except WorkerDied as exc:  # a figure is missing; the run goes on
                out[tree][name] = {"error": str(exc)}
            log(f"commit wait, {tree}, {name}: { {k: v for k, v in out[tree][name].items() if k != 'events'} }")
    for tree in ("before", "after"):
        r = out[tree]
        if r["one"].get("events_per_s") and r["two"].get("events_per_s"):
            r["two_to_one"] = r["two"]["events_per_s"] / r["one"]["events_per_s"]
    return out


def all_assigned(ws: "Workers", partitions: int, k: int) -> bool:
    owned = []
    for url in ws.urls:
        try:
            m = scrape(url + "/metrics")
        except OSError:
            return False
        owned.append((total(m, "driftline_worker_partitions", stage="intake"),
                      total(m, "driftline_worker_partitions", stage="bank")))
    return (len(owned) == k and all(i > 0 and b > 0 for i, b in owned)
            and sum(i for i, _ in owned) == partitions and sum(b for _, b in owned) == partitions)


def latency(bootstrap: str, rows: int, rate: float, logdir: Path, live: int | None = None,
            sparse_every: float = 3.0, pythonpath: str | None = None) -> dict:
    """publish -> counted at a fixed rate on 4 partitions; with `live`, the load goes to the first
    `live` partitions only and the others get one event every `sparse_every` s (sparse sources:
    the watermark waits for them up to worker.idle_timeout)."""
    from confluent_kafka import Producer

    group = f"perf-lat-{uuid.uuid4().hex[:8]}"
    n_part = 4
    cfg = worker_config(logdir / f"{group}.yml", bootstrap, group, group, n_part)
    ws = Workers(cfg, 1, logdir, pythonpath)
    inf, _ = demo_raw(rows)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    try:
        deadline = time.time() + 120
        while ws.sum("driftline_worker_partitions", stage="bank") < 4:
            if time.time() > deadline:
                raise RuntimeError("worker not ready")
            time.sleep(0.05)
        sent: list[float] = []
        seen: list[tuple[float, float]] = []
        start = time.perf_counter()
        next_scrape = start
        for i, raw in enumerate(inf):
            t = start + i / rate
            while True:
                now = time.perf_counter()
                if now >= next_scrape:
                    seen.append((now, ws.sum("driftline_events_total", kind="inference", outcome="accepted")))
                    next_scrape = now + 0.05
                if now >= t:
                    break
                time.sleep(min(t - now, 0.002))
            if live is None:
                p.produce(f"{group}.inferences", value=raw, key=str(i).encode())
            else:
                p.produce(f"{group}.inferences", value=raw, key=str(i).encode(), partition=i % live)
                if i % int(rate * sparse_every) == 0:  # the sparse partitions' occasional event
                    for q in range(live, n_part):
                        sent.append(time.perf_counter())
                        p.produce(f"{group}.inferences", value=raw, key=f"s{i}-{q}".encode(), partition=q)
            p.poll(0)
            sent.append(time.perf_counter())
        p.flush(30)
        while not seen or seen[-1][1] < len(sent):
            seen.append((time.perf_counter(), ws.sum("driftline_events_total", kind="inference", outcome="accepted")))
            time.sleep(0.02)
            if time.perf_counter() - start > 600:
                break
    finally:
        ws.stop()
    lat = []
    j = 0
    for k, ts in enumerate(sent):
        while j < len(seen) and seen[j][1] < k + 1:
            j += 1
        if j < len(seen):
            lat.append(seen[j][0] - ts)
    lat.sort()
    pct = lambda q: lat[min(int(q * len(lat)), len(lat) - 1)]  # noqa: E731
    return {"offered_events_per_s": rate, "events": len(sent), "p50_ms": 1000 * pct(0.5), "p99_ms": 1000 * pct(0.99),
            "scrape_interval_ms": 50, "partitions": n_part, "live_partitions": live or n_part}


REPLAY_TIMED = r"""
import sys, time, orjson
from pathlib import Path
from driftline.stream.replay import replay
from driftline.stream.settings import load_settings
d, passes = Path(sys.argv[1]), int(sys.argv[2])
runs = []
for _ in range(passes):
    wall, cpu = time.perf_counter(), time.process_time()
    result = replay(load_settings(d / "c.yml"), d / "i", d / "l")
    runs.append([time.perf_counter() - wall, time.process_time() - cpu, result.events])
print(orjson.dumps(runs).decode())
"""


def replay_timed(inf: list[bytes], lab: list[bytes], pythonpath: str | None = None, passes: int = 3) -> dict:
    """`driftline replay` of these raw events (the core: decode, merge in event-time order, join,
    route, the bank; no Kafka, no stage-2 buffer), in a process of its own as a worker runs, with
    the demo config: the median of `passes` timed passes, events/s of wall and of CPU time."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "i").write_bytes(b"\n".join(inf) + b"\n")
        (d / "l").write_bytes(b"\n".join(lab) + b"\n")
        (d / "c.yml").write_text(DEMO_CONFIG)
        env = {**os.environ, "PYTHONPATH": pythonpath} if pythonpath else None
        out = subprocess.run([sys.executable, "-c", REPLAY_TIMED, str(d), str(passes)], capture_output=True,
                             text=True, env=env, cwd=REPO, check=True)
    runs = json.loads(out.stdout.strip().splitlines()[-1])
    events = len(inf) + len(lab)
    if any(n != events for _, _, n in runs):  # a figure of fewer events than asked would flatter it
        raise RuntimeError(f"replay read {[n for _, _, n in runs]} events of {events}")
    mid = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    cpu = [c for _, c, _ in runs]
    return {"events": events, "passes": passes, "events_per_s": events / mid([w for w, _, _ in runs]),
            "events_per_cpu_s": events / mid(cpu), "cpu_seconds_per_pass": cpu, "events_read": [n for _, _, n in runs]}


def replay_cpu(rows: int, pythonpath: str | None) -> float:
    """Events per CPU second of `driftline replay` (the core alone, no Kafka) of a tree, on the
    demo's events: what the worker's own figure is divided by, so that core changes of other
    commits cancel out (the best of 2 passes)."""
    inf, lab, _ = demo_events(rows_limit=rows, drift_row=rows // 2)
    figure = replay_timed([orjson.dumps(e) for e in inf], [orjson.dumps(e) for e in lab], pythonpath, passes=2)
    return figure["events"] / min(figure["cpu_seconds_per_pass"])  # the best pass, not the median of two


def event_time_cost(bootstrap: str, prefix: str, rows: int, partitions: int, logdir: Path, before: str | None,
                    quick: bool) -> dict:
    """What event-time alignment costs (issue 13): backlog throughput of one worker against the
    tree `before` (the worker without it) in the same run, and publish -> counted at 1,000
    events/s with every partition live and with half of them sparse."""
    out: dict = {}
    runs = [("after", None)] + ([("before", before)] if before else [])
    # Alternated, twice each: the machine is shared, and its load drifts within a run.
    for name, tree in runs * 2:
        r = worker_throughput(bootstrap, prefix, rows, partitions, 1, logdir, pythonpath=tree)
        out.setdefault(f"throughput_{name}_runs", []).append(r["events_per_s"])
        out.setdefault(f"cpu_{name}_runs", []).append(r["events_per_cpu_s"])
        log(f"event time: 1 worker ({name}): {r['events_per_s']} events/s, {r['events_per_cpu_s']:,.0f} events/cpu-s")
    for name, _ in runs:
        out[f"throughput_{name}"] = max(x for x in out[f"throughput_{name}_runs"] if x)
        out[f"events_per_cpu_s_{name}"] = max(out[f"cpu_{name}_runs"])
    if before:
        out["throughput_ratio"] = out["throughput_after"] / out["throughput_before"]
        out["cpu_ratio"] = out["events_per_cpu_s_after"] / out["events_per_cpu_s_before"]
        # The trees differ in more than alignment (other commits change the core): the worker's
        # CPU per event relative to replay's on the same tree isolates what the worker adds.
        out["replay_events_per_cpu_s_after"] = replay_cpu(20_000, None)
        out["replay_events_per_cpu_s_before"] = replay_cpu(20_000, before)
        out["worker_over_replay_after"] = out["events_per_cpu_s_after"] / out["replay_events_per_cpu_s_after"]
        out["worker_over_replay_before"] = out["events_per_cpu_s_before"] / out["replay_events_per_cpu_s_before"]
        out["alignment_cpu_ratio"] = out["worker_over_replay_after"] / out["worker_over_replay_before"]
    n = 8_000 if quick else 20_000
    out["latency_all_live"] = latency(bootstrap, n, 1000.0, logdir)
    out["latency_half_sparse"] = latency(bootstrap, n, 1000.0, logdir, live=2)
    log(f"event time: p99 all live {out['latency_all_live']['p99_ms']:.0f} ms, "
        f"half sparse {out['latency_half_sparse']['p99_ms']:.0f} ms")
    return out


# ------------------------------------------------------------------------------------ in-process
def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_per_segment(counts: tuple[int, ...]) -> list[dict]:
    """RSS growth of an intake + bank as segments are added (demo model, one event each)."""
    import yaml

    from driftline.detectors.bank import DetectorBank
    from driftline.stream.pipeline import Intake, feed
    from driftline.stream.settings import parse_settings

    cfg = yaml.safe_load(DEMO_CONFIG)
    out = []
    inf, lab, _ = demo_events(rows_limit=600, drift_row=10**9)
    for n in counts:
        cfg["models"]["shuttle"]["max_segments"] = n
        settings = parse_settings(cfg, env={})
        gc.collect()
        intake, bank = Intake(settings), DetectorBank(settings.spec_for)
        before = rss()
        from driftline.stream.codec import decode_inference, decode_label

        for s in range(n):
            # enough events per segment to build every signal's detectors (categorical references too)
            for j in range(3):
                ev = dict(inf[(s * 3 + j) % len(inf)])
                ev["prediction_id"] = f"{s}-{j}"
                ev["segment"] = {"band": f"b{s}"}
                obs, _ = intake.take_inference(decode_inference(orjson.dumps(ev), 0.0), b"")
                feed(bank, obs)
                obs, _ = intake.take_label(decode_label(orjson.dumps({"prediction_id": ev["prediction_id"], "label": 0,
                                                                      "timestamp": ev["timestamp"] + 1}), 0.0), b"")
                feed(bank, obs)
        grew = rss() - before
        snap = len(bank.snapshot())
        out.append({"segments": n, "rss_growth_bytes": grew, "bytes_per_segment": grew / n,
                    "snapshot_bytes_per_segment": snap / n})
        del intake, bank
    return out


def scrape_cost(series_targets: tuple[int, ...]) -> list[dict]:
    """/metrics render time and size with banks holding about N series (a scrape after the first)."""
    from driftline.detectors.bank import DetectorBank
    from driftline.detectors.spec import ModelSpec
    from driftline.stream.exporter import DriftlineMetrics
    from driftline.stream.settings import parse_settings

    spec = ModelSpec(name="m", segments=("seg",), max_segments=10**6, features={"f1": "numeric", "f2": "numeric"})
    settings = parse_settings({}, env={})
    out = []
    def series_of(bank) -> int:
        body = DriftlineMetrics(settings, banks=lambda: (bank,)).render()
        return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))

    def filled(n_seg: int) -> DetectorBank:
        bank = DetectorBank(lambda m: spec)
        for s in range(n_seg):
            seg = f"seg=s{s}"
            bank.observe_inference("m", seg, {"f1": 1.0, "f2": 2.0}, None, 0.5, 1.0, "p")
            bank.observe_outcome("m", seg, 1, 1, 1.0, "p")
        return bank

    per_segment = series_of(filled(2)) - series_of(filled(1))
    for target in series_targets:
        bank = filled(max(1, target // per_segment))
        metrics = DriftlineMetrics(settings, banks=lambda: (bank,))
        body = metrics.render()  # the first render formats every series' labels once (then cached)
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            body = metrics.render()
            runs.append(time.perf_counter() - t0)
        n_series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        out.append({"series": n_series, "seconds": min(runs), "bytes": len(body)})
    return out


def slice_cost(rows: int = 20_000, repeats: int = 3) -> dict:
    """Per-event cost of the slice accountant (issue 16): the demo's events (4 features, segments
    band=*) through an intake and a bank, with the accountant and with its `observe` replaced by a
    no-op (the rest identical); the best of `repeats` runs each, alternated."""
    import yaml

    from driftline.detectors import slices
    from driftline.detectors.bank import DetectorBank
    from driftline.stream.codec import decode_inference, decode_label
    from driftline.stream.pipeline import Intake, feed
    from driftline.stream.settings import parse_settings

    settings = parse_settings(yaml.safe_load(DEMO_CONFIG), env={})
    inf, lab, _ = demo_events(rows_limit=rows, drift_row=rows // 2)
    events = sorted([(e["timestamp"], 0, decode_inference(orjson.dumps(e), 0.0)) for e in inf]
                    + [(e["timestamp"], 1, decode_label(orjson.dumps(e), 0.0)) for e in lab], key=lambda t: t[:2])
    real = slices.SliceAccountant.observe

    def once() -> float:
        intake, bank = Intake(settings), DetectorBank(settings.spec_for)
        t0 = time.perf_counter()
        for _, kind, ev in events:
            obs, _ = intake.take_inference(ev) if kind == 0 else intake.take_label(ev)
            feed(bank, obs)
        return (time.perf_counter() - t0) / len(events)

    best = {"with": math.inf, "without": math.inf}
    try:
        for _ in range(repeats):
            slices.SliceAccountant.observe = real
            best["with"] = min(best["with"], once())
            slices.SliceAccountant.observe = lambda self, *a: None
            best["without"] = min(best["without"], once())
    finally:
        slices.SliceAccountant.observe = real
    return {"events": len(events), "seconds_per_event_with": best["with"], "seconds_per_event_without": best["without"],
            "ratio": best["with"] / best["without"],
            "note": "in process, intake + bank, demo config (4 features; each label feeds __all__ and its band)"}


LLM_CONFIG = """
models:
  assistant:
    task: llm
    segments: [route]
    llm: {prices: {"*": {input: 2.5, output: 10}}}
"""


def llm_raw(calls: int, dim: int, rng, start: float) -> tuple[list[bytes], list[bytes]]:
    """LLM call events (3 routes, a `dim`-number embedding unless dim is 0) and their feedback
    labels 0.5 s later, one call per ms of event time from `start`."""
    inf, lab = [], []
    for i in range(calls):
        llm = {"input_tokens": rng.randint(50, 500), "output_tokens": rng.randint(10, 300),
               "duration": rng.lognormvariate(0, 0.3), "time_to_first_token": 0.2, "finish_reason": "stop",
               "request_model": "m", "evaluations": {"relevance": rng.random()}}
        if dim:
            llm["embedding"] = [rng.gauss(0, 1) for _ in range(dim)]
        ts = start + i * 0.001
        inf.append(orjson.dumps({"prediction_id": f"c{i}", "model": "assistant", "timestamp": ts,
                                 "segment": {"route": f"r{i % 3}"}, "llm": llm}))
        lab.append(orjson.dumps({"prediction_id": f"c{i}", "label": rng.random() < 0.9, "timestamp": ts + 0.5}))
    return inf, lab


def llm_worker_throughput(bootstrap: str, logdir: Path, calls: int = 20_000, dim: int = 384,
                          partitions: int = 3) -> dict:
    """One `driftline run` worker on the real broker over a backlog of LLM calls and their
    feedback, without and with a `dim`-number embedding, each beside the consume ceiling of the
    same backlog (same run, same machine)."""
    import random

    out: dict = {"calls": calls, "embedding_dim": dim, "partitions": partitions}
    for name, d in (("without_embedding", 0), ("with_embedding", dim)):
        prefix = f"perf-llm-{uuid.uuid4().hex[:8]}"
        inf, lab = llm_raw(calls, d, random.Random(2), time.time())
        fill(bootstrap, prefix, partitions, inf, lab)
        wall, _ = ceiling(bootstrap, prefix, 2 * calls)
        w = worker_throughput(bootstrap, prefix, calls, partitions, 1, logdir, models=LLM_CONFIG)
        out[name] = {"ceiling_events_per_s": wall, "worker_events_per_s": w["events_per_s"],
                     "worker_events_per_cpu_s": w.get("events_per_cpu_s"),
                     "ratio_to_ceiling": w["events_per_s"] / wall if w["events_per_s"] else None,
                     "event_bytes": sum(map(len, inf)) / len(inf)}
        log(f"LLM worker {name}: {w['events_per_s'] or 0:,.0f} events/s (calls + feedback), ceiling {wall:,.0f}")
    out["note"] = ("1 worker, real broker, events = calls + feedback labels; ceiling = bare consume + decode of "
                   "the same backlog in the same run")
    return out


def llm_cost(calls: int = 20_000, dim: int = 384, spans: int = 2_000, repeats: int = 3) -> dict:
    """LLM calls (issue 17), in process: events per second through an intake and a bank (3 routes,
    so every call feeds __all__ and its route) without and with a `dim`-number embedding; the
    OTLP decode cost per span (real SDK spans, OpenTelemetry's encoder, batches of 100); and the
    memory of one LLM segment's state (tracemalloc)."""
    import random
    import tracemalloc

    import yaml

    from driftline.detectors.bank import DetectorBank
    from driftline.stream.codec import decode_inference
    from driftline.stream.pipeline import Intake, feed
    from driftline.stream.settings import parse_settings

    settings = parse_settings(yaml.safe_load(LLM_CONFIG), env={})
    rng = random.Random(1)

    def events(with_embedding: bool) -> list:
        return llm_raw(calls, dim if with_embedding else 0, rng, 1.7e9)[0]

    def once(raws: list) -> tuple[float, DetectorBank]:
        intake, bank = Intake(settings), DetectorBank(settings.spec_for)
        t0 = time.perf_counter()
        for raw in raws:  # decode included: what a worker's stage 1 and 2 do per call, less Kafka
            obs, _ = intake.take_inference(decode_inference(raw, 0.0))
            feed(bank, obs)
        return len(raws) / (time.perf_counter() - t0), bank

    plain, embedded = events(False), events(True)
    best = {"without": 0.0, "with": 0.0}
    for _ in range(repeats):
        best["without"] = max(best["without"], once(plain)[0])
        best["with"] = max(best["with"], once(embedded)[0])
    # Memory of the bank alone (the intake's join holds every unlabelled call: not segment state).
    intake = Intake(settings)
    observations = [intake.take_inference(decode_inference(raw, 0.0))[0] for raw in embedded]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    bank = DetectorBank(settings.spec_for)
    for obs in observations:
        feed(bank, obs)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    segments = len(bank)

    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from driftline.stream.otlp import decode_spans

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("bench")
    for i in range(spans):
        tracer.start_span("chat", attributes={"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 100,
                                              "gen_ai.usage.output_tokens": 20, "gen_ai.request.model": "m",
                                              "gen_ai.response.finish_reasons": ["stop"], "app.route": "r"}).end()
    done = exporter.get_finished_spans()
    messages = [encode_spans(done[i:i + 100]).SerializeToString() for i in range(0, len(done), 100)]
    otlp = settings.otlp
    per_span = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for m in messages:
            decode_spans(m, "otlp_proto", otlp)
        per_span = min(per_span, (time.perf_counter() - t0) / len(done))
    return {"calls": calls, "embedding_dim": dim, "calls_per_s_without_embedding": best["without"],
            "calls_per_s_with_embedding": best["with"], "otlp_proto_decode_us_per_span": per_span * 1e6,
            "bytes_per_llm_segment": grown / segments, "segments": segments,
            "note": "in process (decode + intake + bank, one core), 3 routes: each call feeds __all__ and its "
                    "route; memory: the bank's growth (detectors, rolling windows, LLM state) over its segments, embeddings on"}


# ------------------------------------------------------------------------------------ River floor
@dataclasses.dataclass(frozen=True)
class FloorPlan:
    """The River calls one worker makes for a stream, recorded from a real intake + bank.

    `events` pairs each raw event (as on the topic) with the River detector updates the bank made
    for it: (River detector, value) in the bank's order. The detectors are fresh clones of the
    bank's (same parameters), reset before each timed pass, so a pass repeats the bank's River work
    exactly: same objects per (segment, signal, detector), same values, same detections.
    """

    events: tuple[tuple[bytes, tuple], ...]
    detectors: tuple  # the clones, to reset between passes
    inferences: int
    labels: int
    inference_updates: int
    label_updates: int
    per_inference: int  # updates of an inference event once every signal is warm (the most seen)
    per_label: int
    signals: dict  # (model, segment) of __all__: signal -> detectors on it (what the bank built)


def river_plan(settings, inf: list[bytes], lab: list[bytes]) -> FloorPlan:
    """Run the demo config's intake + bank over the events in event-time order, recording every
    River detector update (the classes driftline.detectors.drift builds on, patched for the pass)."""
    from river import drift as river_drift

    from driftline.detectors.bank import DetectorBank
    from driftline.stream.codec import decode_inference, decode_label
    from driftline.stream.pipeline import Intake, feed

    calls: list[tuple] = []
    classes = (river_drift.ADWIN, river_drift.PageHinkley)  # what detectors/drift.py wraps
    originals = {cls: cls.update for cls in classes}

    def recording(update):
        def record(self, x):
            calls.append((self, x))
            return update(self, x)
        return record

    stream = sorted([(orjson.loads(r)["timestamp"], 0, r) for r in inf] + [(orjson.loads(r)["timestamp"], 1, r) for r in lab],
                    key=lambda t: t[:2])
    intake, bank = Intake(settings), DetectorBank(settings.spec_for)
    recorded: list[tuple[bytes, int, tuple]] = []
    try:
        for cls in classes:
            cls.update = recording(originals[cls])
        for _, kind, raw in stream:
            ev = decode_inference(raw, 0.0) if kind == 0 else decode_label(raw, 0.0)
            obs, invalid = intake.take_inference(ev, raw) if kind == 0 else intake.take_label(ev, raw)
            if invalid is not None:
                raise RuntimeError(f"the floor's stream has an invalid event: {invalid.reason}")
            feed(bank, obs)
            recorded.append((raw, kind, tuple(calls)))
            calls.clear()
    finally:
        for cls in classes:
            cls.update = originals[cls]
    clones: dict[int, object] = {}
    keep = []  # the bank's detectors stay alive until mapped: ids are not reused meanwhile
    events = []
    for raw, kind, made in recorded:
        mapped = []
        for det, x in made:
            c = clones.get(id(det))
            if c is None:
                c = clones[id(det)] = det.clone()
                keep.append(det)
            mapped.append((c, x))
        events.append((raw, tuple(mapped)))
    n_inf = sum(1 for _, k, _ in recorded if k == 0)
    upd_inf = sum(len(m) for _, k, m in recorded if k == 0)
    signals = {}
    for (model, segment), state in bank.items():
        if segment == "__all__":
            signals = {name: [r.detector for r in readings] for name, readings in state.detector_readings()}
    return FloorPlan(events=tuple(events), detectors=tuple(clones.values()), inferences=n_inf,
                     labels=len(recorded) - n_inf, inference_updates=upd_inf,
                     label_updates=sum(len(m) for _, k, m in recorded if k == 1),
                     per_inference=max((len(m) for _, k, m in recorded if k == 0), default=0),
                     per_label=max((len(m) for _, k, m in recorded if k == 1), default=0), signals=signals)


def river_floor(plan: FloorPlan, passes: int = 3) -> dict:
    """Events/s of decoding each event with orjson and making its River updates (each followed by
    the `drift_detected` read the wrappers make), nothing else: the most one process can do with
    River detecting. The median of `passes` timed passes, each on freshly reset detectors."""
    loads = orjson.loads
    runs = []
    for _ in range(passes):
        for det in plan.detectors:
            det._reset()
        t0 = time.perf_counter()
        for raw, updates in plan.events:
            loads(raw)
            for det, x in updates:
                det.update(x)
                det.drift_detected
        runs.append(len(plan.events) / (time.perf_counter() - t0))
    runs.sort()
    return {"events_per_s": runs[len(runs) // 2], "passes_events_per_s": runs, "events": len(plan.events),
            "inference_events": plan.inferences, "label_events": plan.labels,
            "updates_per_inference": plan.per_inference, "updates_per_label": plan.per_label,
            "mean_updates_per_inference": plan.inference_updates / max(plan.inferences, 1),
            "mean_updates_per_label": plan.label_updates / max(plan.labels, 1),
            "signals_at_all": plan.signals,
            "note": "orjson.loads + the River updates (and drift_detected reads) the demo config's bank made for "
                    "these events, recorded from a real intake + bank; in process, no Kafka"}


# ------------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller streams (about a minute)")
    ap.add_argument("--bootstrap", help="use this broker instead of starting one")
    ap.add_argument("--out", default=str(REPO / "bench/results"))
    ap.add_argument("--no-faust", action="store_true")
    ap.add_argument("--no-quix", action="store_true")
    ap.add_argument("--readme", action="store_true",
                    help="only rewrite README.md's generated table from OUT/perf.json (no measuring)")
    ap.add_argument("--slices-only", action="store_true",
                    help="only the slice accountant's per-event cost, merged into perf.json's \"slices\"")
    ap.add_argument("--only-event-time", action="store_true",
                    help="only the event-time cost (writes OUT/event_time.json)")
    ap.add_argument("--before", help="a driftline tree (PYTHONPATH) whose worker is the throughput baseline")
    ap.add_argument("--transactions-only", action="store_true",
                    help="only the cost of exactly-once: 1 worker with worker.exactly_once off and on, alternating, "
                         "on one backlog; merged into perf.json's \"transactions\"")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the memory per segment (in process, 1k and 10k segments), merged into perf.json's \"memory\"")
    ap.add_argument("--commit-wait-only", action="store_true",
                    help="only where an exactly-once worker waits: 1 and 2 workers on one backlog and latency, "
                         "this tree and the --before tree alternating; merged into perf.json's \"commit_wait\"")
    ap.add_argument("--throughput-only", action="store_true",
                    help="only the issue's three figures: ceiling, River floor, 1 and 2 workers on one backlog, same run; "
                         "written to OUT/throughput.json (perf.json is left alone)")
    ap.add_argument("--scaling-only", action="store_true",
                    help="only 2 workers against 1 on backlogs of 100k and 300k pairs (20k, 60k with --quick); "
                         "merged into perf.json's \"scaling\"")
    ap.add_argument("--llm-only", action="store_true",
                    help="only the LLM figures (in process), merged into perf.json's \"llm\"")
    args = ap.parse_args()
    if args.only_event_time:
        return event_time_main(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.throughput_only:
        return throughput_main(args, out)
    if args.llm_only:
        path = out / "perf.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        results["llm"] = llm_cost(5_000 if args.quick else 20_000) | {"date": time.strftime("%Y-%m-%d")}
        ceiling_rate = results.get("ceiling", {}).get("events_per_s")
        if ceiling_rate:  # the consume ceiling of perf.json's last full run (the same machine)
            results["llm"]["ratio_to_ceiling_with_embedding"] = results["llm"]["calls_per_s_with_embedding"] / ceiling_rate
        with Broker(args.bootstrap) as broker, tempfile.TemporaryDirectory() as tmp:
            results["llm"]["worker"] = llm_worker_throughput(broker.bootstrap, Path(tmp),
                                                             5_000 if args.quick else 20_000)
        path.write_text(json.dumps(results, indent=2))
        print(json.dumps(results["llm"], indent=2))
        return 0
    if args.scaling_only:
        path = out / "perf.json"
        with Broker(args.bootstrap) as broker, tempfile.TemporaryDirectory() as tmp:
            figures = scaling(broker, BACKLOG_PARTITIONS, Path(tmp), SCALING_SIZES_QUICK if args.quick else SCALING_SIZES)
        results = json.loads(path.read_text()) if path.exists() else {}  # read last: a full run may have written it
        results["scaling"] = [f | {"date": time.strftime("%Y-%m-%d"), "run": "--scaling-only"} for f in figures]
        path.write_text(json.dumps(results, indent=2))
        print("\n".join(scaling_rows(results["scaling"])))
        return 0
    if args.transactions_only:
        return backlog_figure(args, out, "transactions", lambda bootstrap, prefix, rows, logdir: transactions_cost(
            bootstrap, prefix, rows, BACKLOG_PARTITIONS, logdir), hide=("runs",))
    if args.commit_wait_only:
        if not args.before:
            raise SystemExit("--commit-wait-only needs --before TREE (a PYTHONPATH whose driftline is the baseline)")
        return backlog_figure(args, out, "commit_wait", lambda bootstrap, prefix, rows, logdir: commit_wait(
            bootstrap, prefix, rows, BACKLOG_PARTITIONS, logdir, args.before, 8_000 if args.quick else 20_000))
    if args.readme:
        readme(json.loads((out / "perf.json").read_text()), REPO / "README.md")
        return 0
    if args.memory_only:
        path = out / "perf.json"
        memory = memory_per_segment((1_000,) if args.quick else (1_000, 10_000))
        results = json.loads(path.read_text()) if path.exists() else {}  # read last: a full run may have written it
        results["memory"] = [m | {"date": time.strftime("%Y-%m-%d"), "run": "--memory-only"} for m in memory]
        path.write_text(json.dumps(results, indent=2))
        print(json.dumps(results["memory"], indent=2))
        return 0
    if args.slices_only:
        path = out / "perf.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        results["slices"] = slice_cost() | {"date": time.strftime("%Y-%m-%d")}
        path.write_text(json.dumps(results, indent=2))
        print(json.dumps(results["slices"], indent=2))
        return 0
    rows = 20_000 if args.quick else 100_000
    partitions = 6
    results: dict = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, {platform.machine()}, "
        f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB",
        "python": platform.python_version(), "versions": versions(), "quick": args.quick,
    }
    log("memory and scrape cost (in process)")
    results["memory"] = memory_per_segment((1_000,) if args.quick else (1_000, 10_000))
    results["scrape"] = scrape_cost((10_000, 100_000))
    results["slices"] = slice_cost(5_000 if args.quick else 20_000)
    log(f"slice accountant: {results['slices']['ratio']:.2f}x the per-event cost without it")
    results["llm"] = llm_cost(5_000 if args.quick else 20_000)
    log(f"LLM calls: {results['llm']['calls_per_s_without_embedding']:,.0f}/s without, "
        f"{results['llm']['calls_per_s_with_embedding']:,.0f}/s with a 384-number embedding")
    with Broker(args.bootstrap) as broker, tempfile.TemporaryDirectory() as tmp:
        logdir = Path(tmp)
        prefix = f"perf-{uuid.uuid4().hex[:8]}"
        log(f"filling {prefix} with {rows:,} inference and {rows:,} label events ({partitions} partitions)")
        inf, lab = demo_raw(rows)
        fill(broker.bootstrap, prefix, partitions, inf, lab)
        wall, cpu = ceiling(broker.bootstrap, prefix, 2 * rows)
        results["ceiling"] = {"events_per_s": wall, "events_per_cpu_s": cpu}
        results["llm"]["ratio_to_ceiling_with_embedding"] = results["llm"]["calls_per_s_with_embedding"] / wall
        log(f"ceiling {wall:,.0f} events/s")
        if not args.no_faust:
            results["faust"] = {"events_per_s": faust_ceiling(broker.bootstrap, prefix, 2 * rows, partitions)}
            log(f"faust {results['faust']['events_per_s']}")
        if not args.no_quix:
            results["quix"] = {"events_per_s": quix_ceiling(broker.bootstrap, prefix, 2 * rows)}
            log(f"quix-streams {results['quix']['events_per_s']}")
        log("River floor: recording the demo config's River updates (in process)")
        plan = river_plan(parse_settings(yaml.safe_load(DEMO_CONFIG), env={}), inf, lab)
        results["river_floor"] = river_floor(plan)
        del plan
        log(f"River floor {results['river_floor']['events_per_s']:,.0f} events/s "
            f"({results['river_floor']['updates_per_inference']} updates per inference, "
            f"{results['river_floor']['updates_per_label']} per label)")
        results["replay"] = replay_timed(inf, lab)
        log(f"replay {results['replay']['events_per_s']:,.0f} events/s, "
            f"{results['replay']['events_per_cpu_s']:,.0f} per CPU s")
        results["workers"] = []
        for k in (1, 2, 3):
            try:
                r = worker_throughput(broker.bootstrap, prefix, rows, partitions, k, logdir, broker=broker)
            except WorkerDied as exc:
                log(f"{k} worker(s): no figure: {exc}")
                results.setdefault("worker_failures", []).append({"workers": k, "error": str(exc)})
                continue
            if r["events_per_s"] is None:
                continue
            r["ratio_to_ceiling_per_worker"] = r["events_per_s_per_worker"] / wall
            results["workers"].append(r)
            log(f"{k} worker(s): {r['events_per_s']:,.0f} events/s, {r['ratio_to_ceiling_per_worker']:.1%} of the ceiling per worker")
        results["scaling"] = scaling(broker, partitions, logdir, SCALING_SIZES_QUICK if args.quick else SCALING_SIZES,
                                     filled={rows: prefix})
        one = next((w for w in results["workers"] if w["workers"] == 1), None)
        floor = results["river_floor"]["events_per_s"]
        # The issue's three figures, from this one run, and their ratios.
        results["ceiling_events_per_s"] = wall
        results["river_floor_events_per_s"] = floor
        results["worker_events_per_s"] = one["events_per_s"] if one else None
        results["worker_to_floor"] = one["events_per_s"] / floor if one else None
        results["worker_to_ceiling"] = one["events_per_s"] / wall if one else None
        results["floor_to_ceiling"] = floor / wall
        # Where the rest goes: the core alone (replay) against the floor, the worker against it.
        results["replay_to_floor"] = results["replay"]["events_per_s"] / floor
        results["worker_to_replay_per_cpu_s"] = (one["events_per_cpu_s"] / results["replay"]["events_per_cpu_s"]
                                                 if one else None)
        try:
            r = worker_throughput(broker.bootstrap, prefix, rows, partitions, 1, logdir, baseline=True)
        except WorkerDied as exc:  # the figure is missing, the rest of the run is still one run
            log(f"1 worker with a baseline profile: no figure: {exc}")
            r = {"workers": 1, "events_per_s": None, "error": str(exc)}
        if r["events_per_s"] is not None:
            r["ratio_to_ceiling_per_worker"] = r["events_per_s_per_worker"] / wall
            results["worker_with_baseline"] = r
            log(f"1 worker with a baseline profile: {r['events_per_s']:,.0f} events/s")
        results["transactions"] = transactions_cost(broker.bootstrap, prefix, rows, partitions, logdir, rounds=1)
        log(f"exactly-once on / off: {results['transactions']['events_per_s_on_to_off']:.2f}x events/s")
        results["latency"] = latency(broker.bootstrap, 8_000 if args.quick else 20_000, 1000.0, logdir)
        log(f"latency p50 {results['latency']['p50_ms']:.0f} ms, p99 {results['latency']['p99_ms']:.0f} ms")
    (out / "perf.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "perf.png")
    print(table(results))
    return 0


BACKLOG_PARTITIONS = 6  # partitions of the backlog the --X-only figures run on


@dataclasses.dataclass(frozen=True)
class Backlog:
    """The demo backlog a `--X-only` figure measures: `rows` inference and `rows` label events
    written once under `prefix` to `broker`, their raw bytes, and a scratch folder for logs."""

    broker: Broker
    prefix: str
    rows: int
    partitions: int
    inf: list[bytes]
    lab: list[bytes]
    logdir: Path

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap


@contextlib.contextmanager
def demo_backlog(args, partitions: int = BACKLOG_PARTITIONS) -> Iterator[Backlog]:
    """A broker (or --bootstrap's) holding the demo backlog: 100k pairs, 20k with --quick."""
    rows = 20_000 if args.quick else 100_000
    with Broker(args.bootstrap) as broker, tempfile.TemporaryDirectory() as tmp:
        prefix = f"perf-{uuid.uuid4().hex[:8]}"
        inf, lab = demo_raw(rows)
        fill(broker.bootstrap, prefix, partitions, inf, lab)
        yield Backlog(broker, prefix, rows, partitions, inf, lab, Path(tmp))


def backlog_figure(args, out: Path, key: str, measure: Callable[[str, str, int, Path], dict],
                   hide: tuple[str, ...] = ()) -> int:
    """One `--X-only` figure on one demo backlog: a broker, the backlog written once (100k pairs,
    20k with --quick), `measure(bootstrap, prefix, rows, logdir)`, then merged into OUT/perf.json
    as `key` and printed (without the `hide` keys)."""
    path = out / "perf.json"
    with demo_backlog(args) as b:
        figure = measure(b.bootstrap, b.prefix, b.rows, b.logdir) | {"date": time.strftime("%Y-%m-%d"), "quick": args.quick}
    # Read at the end: a full run may have rewritten perf.json meanwhile; only this key is ours.
    results = json.loads(path.read_text()) if path.exists() else {}
    results[key] = figure
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in figure.items() if k not in hide}, indent=2))
    return 0


def throughput_main(args, out: Path) -> int:
    """The ceiling, the River floor and 1 and 2 workers on one backlog, in one run."""
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M")}
    with demo_backlog(args) as b:
        results |= {"rows": b.rows, "partitions": b.partitions}
        wall, cpu = ceiling(b.bootstrap, b.prefix, 2 * b.rows)
        results["ceiling"] = {"events_per_s": wall, "events_per_cpu_s": cpu}
        plan = river_plan(parse_settings(yaml.safe_load(DEMO_CONFIG), env={}), b.inf, b.lab)
        results["river_floor"] = river_floor(plan)
        del plan
        results["replay"] = replay_timed(b.inf, b.lab)
        results["workers"] = []
        for k in (1, 2):
            r = worker_throughput(b.bootstrap, b.prefix, b.rows, b.partitions, k, b.logdir, pythonpath=args.before,
                                  broker=b.broker)
            results["workers"].append(r)
            log(f"{k} worker(s): {r}")
    floor = results["river_floor"]["events_per_s"]
    one, two = results["workers"][0], results["workers"][1]
    results |= {"ceiling_events_per_s": wall, "river_floor_events_per_s": floor,
                "worker_events_per_s": one["events_per_s"], "worker_to_floor": one["events_per_s"] / floor,
                "worker_cpu_to_floor": one["events_per_cpu_s"] / floor,
                "replay_to_floor": results["replay"]["events_per_s"] / floor,
                "worker_to_replay_per_cpu_s": one["events_per_cpu_s"] / results["replay"]["events_per_cpu_s"],
                "two_to_one": two["events_per_s"] / one["events_per_s"]}
    (out / "throughput.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k not in ("river_floor",)}, indent=2))
    return 0


def event_time_main(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with demo_backlog(args, partitions=6) as b:
        r = event_time_cost(b.bootstrap, b.prefix, b.rows, b.partitions, b.logdir, args.before, args.quick)
    r |= {"date": time.strftime("%Y-%m-%d"), "rows": b.rows, "quick": args.quick}
    (out / "event_time.json").write_text(json.dumps(r, indent=2))
    print(event_time_table(r))
    return 0


def event_time_table(r: dict) -> str:
    rows = ["| event-time alignment (bench/perf.py --only-event-time) | figure |", "|---|---|"]
    if r.get("throughput_ratio"):
        rows.append(f"| backlog throughput, 1 worker, this tree / --before tree (best of 2 each; wall time, noisy here) | {r['throughput_ratio']:.2f} "
                    f"({r['throughput_after']:,.0f} / {r['throughput_before']:,.0f} events/s) |")
        rows.append(f"| events per CPU second, this tree / the --before tree | {r['cpu_ratio']:.2f} "
                    f"({r['events_per_cpu_s_after']:,.0f} / {r['events_per_cpu_s_before']:,.0f}) |")
        rows.append(f"| `driftline replay` (core only) events per CPU second, this tree / --before tree | "
                    f"{r['replay_events_per_cpu_s_after'] / r['replay_events_per_cpu_s_before']:.2f} "
                    f"({r['replay_events_per_cpu_s_after']:,.0f} / {r['replay_events_per_cpu_s_before']:,.0f}) |")
        rows.append(f"| what alignment costs: (worker / replay) this tree over (worker / replay) --before tree | "
                    f"{r['alignment_cpu_ratio']:.2f} |")
    for key, what in (("latency_all_live", "4 partitions live"), ("latency_half_sparse", "2 live, 2 with one event per 3 s")):
        lat = r[key]
        rows.append(f"| publish -> counted at 1,000 events/s, {what}: p50 / p99 | {lat['p50_ms']:.0f} / {lat['p99_ms']:.0f} ms |")
    return "\n".join(rows)


def versions() -> dict:
    import importlib.metadata as md

    out = {p: md.version(p) for p in ("confluent-kafka", "river", "prometheus-client", "orjson")}
    for p in ("faust-streaming", "quixstreams"):  # the peer rows' runtimes (the `bench` extra)
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out | {"kafka": "3.9.1", "librdkafka": __import__("confluent_kafka").libversion()[0]}


def table(r: dict) -> str:
    c = r["ceiling"]["events_per_s"]
    lines = [f"Measured {r['date']} on {r['machine']}, Python {r['python']}, "
             + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ":", "",
             "| what | figure | ratio |", "|---|---|---|",
             f"| ceiling: bare confluent-kafka consume + orjson decode | {c:,.0f} events/s | 1 |"]
    if r.get("faust", {}).get("events_per_s"):
        f = r["faust"]["events_per_s"]
        lines.append(f"| faust-streaming agent, same loop | {f:,.0f} events/s | {f / c:.1%} |")
    if r.get("quix", {}).get("events_per_s"):
        q = r["quix"]["events_per_s"]
        lines.append(f"| quix-streams app, same consume + decode and a per-key count in its changelog-backed state | "
                     f"{q:,.0f} events/s | {q / c:.1%} |")
    fl = r.get("river_floor")
    if fl:
        lines.append(f"| River floor: orjson decode + the demo config's River updates ({fl['updates_per_inference']} per "
                     f"inference, {fl['updates_per_label']} per label), in process | {fl['events_per_s']:,.0f} events/s | "
                     f"{fl['events_per_s'] / c:.1%} |")
    rp = r.get("replay")
    if rp:
        lines.append(f"| `driftline replay` of the same events: the core (decode, event-time merge, join, routing, "
                     f"the bank), no Kafka, no stage-2 buffer; a process of its own | {rp['events_per_s']:,.0f} events/s "
                     f"({rp['events_per_cpu_s']:,.0f} per CPU s) | {rp['events_per_s'] / c:.1%} |")
    for w in r["workers"]:
        used = ""
        if w.get("worker_cores") is not None:  # how much of the machine the fleet had, and the broker
            used = f"; {w['worker_cores']:.2f} cores" + (f", broker {w['broker_cores']:.2f}" if w.get("broker_cores") else "")
        if w.get("held_peak") is not None:  # the event-time buffers at their fullest, the slowest scrape
            used += f"; held up to {w['held_peak']:,.0f}, slowest scrape {w['slowest_scrape_s']:.1f} s"
        if w.get("peak_rss_mib") is not None:
            used += f"; peak RSS {w['peak_rss_mib']:,.0f} MiB, {w['page_faults']:,} page faults"
        lines.append(f"| {w['workers']} driftline worker(s), demo config | {w['events_per_s']:,.0f} events/s "
                     f"({w['events_per_s_per_worker']:,.0f} per worker, {w['events_per_cpu_s']:,.0f} per CPU s{used}) | "
                     f"{w['ratio_to_ceiling_per_worker']:.1%} per worker |")
    lines += scaling_rows(r.get("scaling"))
    if r.get("worker_to_floor") is not None:
        lines.append(f"| 1 worker against the River floor (same run) | {r['worker_events_per_s']:,.0f} / "
                     f"{r['river_floor_events_per_s']:,.0f} events/s | **{r['worker_to_floor']:.1%} of the floor** |")
    if r.get("replay_to_floor") is not None and r.get("worker_to_replay_per_cpu_s") is not None:
        lines.append(f"| where the rest goes (same run): replay against the River floor; 1 worker against replay, "
                     f"per CPU s | {r['replay_to_floor']:.1%} of the floor; {r['worker_to_replay_per_cpu_s']:.1%} of "
                     f"replay | |")
    b = r.get("worker_with_baseline")
    if b:
        lines.append(f"| 1 worker, demo config with its baseline profile (PSI/JS/KS, data quality) | "
                     f"{b['events_per_s']:,.0f} events/s | {b['ratio_to_ceiling_per_worker']:.1%} |")
    x = r.get("transactions")
    if x:
        lines.append(f"| 1 worker, `worker.exactly_once` on (default) / off, same backlog ({x.get('date', r['date'])}, "
                     f"{'median of ' + str(x['rounds']) if x['rounds'] > 1 else 'one run each'}; --transactions-only) | "
                     f"{x['events_per_s_on']:,.0f} / {x['events_per_s_off']:,.0f} events/s, "
                     f"{x['events_per_cpu_s_on']:,.0f} / {x['events_per_cpu_s_off']:,.0f} per CPU s | "
                     f"{x['events_per_s_on_to_off']:.2f}x events/s, {x['events_per_cpu_s_on_to_off']:.2f}x per CPU s |")
    lines += commit_wait_rows(r.get("commit_wait"))
    lat = r["latency"]
    lines.append(f"| latency, publish -> counted on /metrics, {lat['offered_events_per_s']:.0f} events/s offered | "
                 f"p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms | |")
    for m in r["memory"]:
        when = f", {m['date']}, {m['run']}" if m.get("run") else ""
        lines.append(f"| memory, {m['segments']:,} segments (demo model{when}) | {m['bytes_per_segment'] / 1024:.1f} KiB RSS "
                     f"per segment, {m['snapshot_bytes_per_segment'] / 1024:.1f} KiB checkpointed | |")
    for s in r["scrape"]:
        lines.append(f"| /metrics render, {s['series']:,} series | {s['seconds'] * 1000:.0f} ms, "
                     f"{s['bytes'] / 2**20:.1f} MiB | |")
    lines += llm_rows(r.get("llm") or {})
    return "\n".join(lines)


def commit_wait_rows(w: dict | None) -> list[str]:
    """`--commit-wait-only`: the exactly-once worker's waits, this tree against the tree before."""
    if not w:
        return []
    b, a = w["before"], w["after"]

    def worker(r: dict) -> str:
        if "error" in r:
            return "no figure: " + ("the worker died fenced (its transaction outlived the transaction timeout)"
                                    if "FENCED" in r["error"] else r["error"][:100].replace("|", "/"))
        if not r.get("events_per_s"):
            return "no figure"
        return (f"{r['events_per_s']:,.0f} events/s, {r['events_per_cpu_s']:,.0f} per CPU s, "
                f"{r['checkpoint_rounds']:.0f} commits, {r['paused_skew_s']:.0f} s paused for skew")

    rows = []
    for name, what in (("one", "1 worker"), ("two", "2 workers")):
        rb, ra = b.get(name, {}), a.get(name, {})
        ratio = (f"{ra['events_per_s'] / rb['events_per_s']:.2f}x events/s"
                 if rb.get("events_per_s") and ra.get("events_per_s") else "")
        rows.append(f"| {what}, exactly-once, backlog: before / after issue 18c's commit cadence, skew bound and "
                    f"release budget ({w['date']}, same run; --commit-wait-only) | {worker(rb)} / {worker(ra)} | {ratio} |")
    for tree in ("before", "after"):
        if w[tree].get("two_to_one"):
            rows.append(f"| 2 workers / 1 worker, {tree}, same run | | {w[tree]['two_to_one']:.2f}x |")
    lb, la = b.get("latency", {}), a.get("latency", {})
    if lb.get("p50_ms") and la.get("p50_ms"):
        rows.append(f"| latency at 1,000 events/s (re-keyed by the worker: two commits), before / after, same run | "
                    f"p50 {lb['p50_ms']:,.0f} / {la['p50_ms']:,.0f} ms, p99 {lb['p99_ms']:,.0f} / {la['p99_ms']:,.0f} ms | "
                    f"{lb['p50_ms'] / la['p50_ms']:.2f}x lower p50 |")
    return rows


def llm_rows(llm: dict) -> list[str]:
    """The LLM figures (`--llm-only` or the full run): 1 worker on the broker against the ceiling
    of the same backlog, in-process rates, OTLP decode, memory per segment."""
    rows = []
    for name, what in (("without_embedding", "no embedding"), ("with_embedding", f"{llm.get('embedding_dim')}-number embedding")):
        w = (llm.get("worker") or {}).get(name)
        if w and w.get("worker_events_per_s"):
            rows.append(f"| LLM calls + feedback, 1 worker, {what} ({w['event_bytes'] / 1024:.1f} KiB a call), "
                        f"against the ceiling of the same backlog ({w['ceiling_events_per_s']:,.0f} events/s) | "
                        f"{w['worker_events_per_s']:,.0f} events/s | {w['ratio_to_ceiling']:.1%} |")
    if llm.get("calls_per_s_with_embedding"):
        rows.append(f"| LLM calls in process (decode + intake + bank), without / with a {llm['embedding_dim']}-number "
                    f"embedding | {llm['calls_per_s_without_embedding']:,.0f} / {llm['calls_per_s_with_embedding']:,.0f} "
                    f"calls/s | |")
        rows.append(f"| OTLP otlp_proto decode + mapping of GenAI spans (batches of 100) | "
                    f"{llm['otlp_proto_decode_us_per_span']:.1f} us per span | |")
        rows.append(f"| memory, one LLM segment's bank state (embeddings on) | "
                    f"{llm['bytes_per_llm_segment'] / 1024:.1f} KiB | |")
    return rows


README_BEGIN = "<!-- bench/perf.py --readme: begin (generated from bench/results/perf.json; do not edit) -->"
README_END = "<!-- bench/perf.py --readme: end -->"


def readme(r: dict, path: Path) -> None:
    """Put `table(r)` between the README's markers: its figures are the results file's, never typed."""
    text = path.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"{path}: no generated-table markers ({README_BEGIN!r} ... {README_END!r})")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    path.write_text(f"{head}{README_BEGIN}\n{table(r)}\n{README_END}{tail}")


def plot(r: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    bars = [("ceiling", r["ceiling"]["events_per_s"], "grey")]
    for key, label in (("faust", "faust"), ("quix", "quix-streams")):
        if r.get(key, {}).get("events_per_s"):
            bars.append((label, r[key]["events_per_s"], "tab:orange"))
    if r.get("river_floor"):
        bars.append(("River floor", r["river_floor"]["events_per_s"], "tab:green"))
    bars += [(f"{w['workers']} worker(s)", w["events_per_s"], "tab:blue") for w in r["workers"]]
    ax[0].bar([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    ax[0].tick_params(axis="x", labelrotation=30)
    ax[0].set_ylabel("events/s")
    ax[0].set_title("throughput (same topics, same run)")
    s = r["scrape"]
    ax[1].plot([x["series"] for x in s], [x["seconds"] * 1000 for x in s], "o-")
    ax[1].set_xscale("log")
    ax[1].set_xlabel("series")
    ax[1].set_ylabel("ms per /metrics render")
    ax[1].set_title("scrape cost")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
