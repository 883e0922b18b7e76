"""FaustPublisher's rules without a broker: the SDK's event contract and checks, and the bound
when the broker is away (an app whose producer never delivers: events wait, then drop)."""
from __future__ import annotations

import asyncio

import faust
import orjson

from driftline.stream.faust import FaustPublisher
from driftline.stream.publish import encode_inference


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def app(tmp_path):
    # Nothing listens on port 1: the app's producer is never started and never delivers.
    return faust.App("i15-unit", broker="kafka://127.0.0.1:1", store="memory://", datadir=str(tmp_path),
                     autodiscover=False, web_enabled=False)


def test_events_are_the_sdks_and_queued_without_awaiting_the_broker(tmp_path):
    async def go():
        a = app(tmp_path)
        pub = FaustPublisher(a, inferences_topic="t.inf", labels_topic="t.lab", clock=lambda: 1767225600.0)
        pid = pub.log_prediction(model="churn", features={"tenure": 3}, prediction=1, score=0.8, prediction_id="p1")
        pub.log_label(pid, 0)
        pending = [a.producer.buffer.pending.get_nowait() for _ in range(2)]
        return pub, pending

    pub, pending = run(go())
    inf, lab = (fut.message for fut in pending)
    assert (inf.channel.get_topic_name(), lab.channel.get_topic_name()) == ("t.inf", "t.lab")
    assert inf.key == b"p1" and lab.key == b"p1"  # the label lands on its prediction's partition
    assert inf.value == encode_inference(prediction_id="p1", model="churn", features={"tenure": 3}, prediction=1,
                                         timestamp=1767225600.0, score=0.8)
    assert orjson.loads(lab.value) == {"prediction_id": "p1", "label": 0, "timestamp": 1767225600.0}
    assert pub.stats.sent == 2 and pub.stats.queued == 2


def test_invalid_calls_are_counted_not_sent(tmp_path):
    async def go():
        a = app(tmp_path)
        pub = FaustPublisher(a)
        pub.log_prediction(model="bad name", features={}, prediction=1)
        pub.log_prediction(model="m", features={"x": float("inf")}, prediction=1)
        pub.log_prediction(model="m", features={}, prediction=1, score=7)
        return pub, a.producer.buffer.pending.qsize()

    pub, queued = run(go())
    assert queued == 0
    assert pub.stats.invalid == 3 and pub.stats.sent == 0


def test_with_the_broker_away_events_wait_up_to_the_bound_then_drop_and_count(tmp_path):
    async def go():
        a = app(tmp_path)
        pub = FaustPublisher(a, max_in_flight=50)
        for i in range(80):
            pub.log_prediction(model="m", features={"x": i}, prediction=1)
        before = pub.stats
        # One event fails (what aiokafka reports after request_timeout_ms), one is delivered.
        first, second = (a.producer.buffer.pending.get_nowait() for _ in range(2))
        first.set_exception(TimeoutError("request timed out"))
        second.set_result(None)
        await asyncio.sleep(0)  # done callbacks run on the loop
        pub.log_prediction(model="m", features={"x": 1}, prediction=1)
        return before, pub.stats

    before, after = run(go())
    assert (before.sent, before.dropped, before.queued) == (50, 30, 50)
    assert (after.sent, after.delivered, after.failed, after.dropped, after.queued) == (51, 1, 1, 30, 49)
