"""Snapshot and restore of core state as bytes, so another worker can resume it.

The format is a version tag, then zlib-compressed pickle. Pickle is safe here only because a
snapshot is written by driftline itself into storage that only driftline writes (a compacted
changelog topic, a file): never restore bytes that came from event content.
"""
from __future__ import annotations

import pickle
import zlib

MAGIC = b"DLS1"


class SnapshotError(ValueError):
    pass


def snapshot(state: object) -> bytes:
    return MAGIC + zlib.compress(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL), 1)


def restore(blob: bytes) -> object:
    if not blob.startswith(MAGIC):
        raise SnapshotError(f"not a driftline snapshot (expected header {MAGIC!r}, got {blob[:4]!r})")
    try:
        return pickle.loads(zlib.decompress(blob[len(MAGIC):]))
    except (zlib.error, pickle.UnpicklingError, EOFError) as exc:
        raise SnapshotError(f"corrupt driftline snapshot: {exc}") from exc
