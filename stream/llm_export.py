"""The LLM families of the metrics contract, read from the banks' LLM segment state at scrape
time (detectors/llm.py holds the counters; nothing is set per call)."""
from __future__ import annotations

from typing import Iterable

from driftline.detectors.bank import DetectorBank
from driftline.stream.exporter import Family


def llm_families(settings, banks: Iterable[DetectorBank]) -> list[Family]:
    seg = ("model", "segment")
    tokens = Family("driftline_llm_tokens", "counter", "Tokens of LLM calls, by type (input, output).",
                    ("model", "segment", "type"))
    cost = Family("driftline_llm_cost", "counter",
                  "Cost of LLM calls from the config's price table (calls of unpriced request models count 0).", seg)
    duration = Family("driftline_llm_duration_seconds", "histogram",
                      "LLM call duration (OpenTelemetry GenAI bucket boundaries).", seg)
    ttft = Family("driftline_llm_time_to_first_token_seconds", "histogram",
                  "Time to the first token of streamed LLM calls (OpenTelemetry GenAI bucket boundaries).", seg)
    reasons = Family("driftline_llm_finish_reasons", "counter", "LLM calls by finish reason.",
                     ("model", "segment", "reason"))
    drift = Family("driftline_embedding_drift", "gauge",
                   "Distance of the live embedding centroid from the reference's, in reference standard deviations "
                   "(whitened sketch).", seg)
    threshold = Family("driftline_embedding_drift_threshold", "gauge",
                       "Embedding drift distance that stationary traffic exceeds with probability 0.001.", seg)
    evals = Family("driftline_llm_evaluations", "counter", "LLM calls with a score of the evaluation.",
                   ("model", "segment", "evaluation"))
    scores = Family("driftline_llm_evaluation_score", "counter",
                    "Sum of the evaluation's scores in [0, 1] (divide by driftline_llm_evaluations_total).",
                    ("model", "segment", "evaluation"))
    found = False
    for bank in banks:
        for key, st in bank.items():
            llm = st.llm
            if llm is None:
                continue
            found = True
            tokens.add(key + ("input",), llm.input_tokens)
            tokens.add(key + ("output",), llm.output_tokens)
            cost.add(key, llm.cost)
            duration.rows.append((key, llm.duration.cumulative(), llm.duration.total))
            if any(llm.ttft.counts):
                ttft.rows.append((key, llm.ttft.cumulative(), llm.ttft.total))
            for reason, n in sorted(llm.finish.items()):
                reasons.add(key + (reason,), n)
            for name, (n, total) in sorted((getattr(llm, "scores", None) or {}).items()):
                evals.add(key + (name,), n)
                scores.add(key + (name,), total)
            d = llm.embedding.distance()
            if d is not None:
                drift.add(key, d)
                threshold.add(key, llm.embedding.threshold())
    m = ("model",)
    budget = Family("driftline_llm_cost_budget_per_hour", "gauge", "An LLM model's cost budget per hour (config).", m)
    trunc = Family("driftline_llm_truncation_share_threshold", "gauge",
                   "Share of calls cut at the token limit (finish reason length) that pages (config).", m)
    for name, spec in sorted(settings.models.items()):
        if spec.llm is None:
            continue
        found = True
        if spec.llm.cost_budget_per_hour is not None:
            budget.add((name,), spec.llm.cost_budget_per_hour)
        trunc.add((name,), spec.llm.truncation_share)
    if not found:
        return []
    for f in (tokens, cost, reasons, evals, scores, drift, threshold):
        f.rows.sort()
    return [tokens, cost, duration, ttft, reasons, evals, scores, drift, threshold, budget, trunc]
