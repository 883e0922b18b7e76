"""The one repack rule of the packs kept between checkpoint rounds, and both of its users."""
import pytest

from driftline.detectors import join as join_module
from driftline.detectors.packs import REPACK, RepackRule
from driftline.detectors.state import decode_state, encode_state
from driftline.stream import eventtime
from driftline.stream.eventtime import WatermarkBuffer

from tests.unit.test_eventtime import put
from tests.unit.test_join import make, pred


def test_the_rule_repacks_past_its_pack_count_or_once_gone_rows_outnumber_kept_ones():
    rule = RepackRule(max_packs=4, slack=10)
    assert not rule.due(packs=4, gone=0, kept=0)
    assert rule.due(packs=5, gone=0, kept=1_000)
    assert not rule.due(packs=1, gone=110, kept=100)  # gone rows up to kept + slack are carried
    assert rule.due(packs=1, gone=111, kept=100)
    assert (REPACK.max_packs, REPACK.slack) == (32, 256)


@pytest.fixture
def two_packs_at_most(monkeypatch):
    rule = RepackRule(max_packs=2)
    monkeypatch.setattr(join_module, "REPACK", rule)
    monkeypatch.setattr(eventtime, "REPACK", rule)


def test_the_join_follows_the_rule(two_packs_at_most):
    """Predictions that keep waiting, registered a few per round: past 2 packs they are packed
    again as one (under the default rule, 5 packs), and restore all the same, in order."""
    j = make(max_pending=10_000)
    for r in range(5):
        for i in range(10):
            j.add_prediction(pred(f"r{r}-{i}", float(r)))
        packs = j.__getstate__()["_pending"]
        assert len(packs) <= 2, (r, len(packs))
    back = decode_state(encode_state({"join": j}))["join"]
    assert list(back._pending.items()) == list(j._pending.items()) and len(back._pending) == 50


def test_the_event_time_buffer_follows_the_rule(two_packs_at_most):
    buf = WatermarkBuffer(sources=1, max_held=10**6, max_bytes=1 << 40, now=0.0)
    for r in range(5):
        for i in range(10):
            put(buf, 0, float(10 * r + i), 10 * r + i)
        packs = buf.to_state()["held_packs"]
        assert len(packs) <= 2, (r, len(packs))
    assert buf.held == 50
