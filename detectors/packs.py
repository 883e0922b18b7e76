"""When rows kept in packs between checkpoint rounds are packed again as one.

Two states are written as packs kept from round to round, so that a row is encoded once, not at
every round while it stays: the join's waiting predictions (detectors/join.py, `PendingPacks`)
and a bank's held observations (stream/eventtime.py, `HeldPacks`). A round packs only the rows
that came since the last one and writes each older pack as it is, with the rows that left it.
Left alone, the packs would carry every row that ever left and grow in number: `RepackRule`
says when the rows still kept are packed again as one.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class RepackRule:
    """Repack once there are more than `max_packs` packs, or once the packs carry more gone rows
    than kept ones (beyond `slack`): the repack's cost is then paid by the rows that left, so
    each row is encoded a bounded number of times on average, a checkpoint carries at most
    about twice the kept rows, and a restore reads a bounded number of packs."""

    max_packs: int = 32
    slack: int = 256  # gone rows carried beyond the kept ones: a small state is not repacked at every round

    def due(self, packs: int, gone: int, kept: int) -> bool:
        """`packs` packs (the round's new one included) carrying `gone` rows that left and `kept` rows still kept."""
        return packs > self.max_packs or gone > kept + self.slack


REPACK = RepackRule()
