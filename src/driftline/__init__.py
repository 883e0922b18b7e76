"""driftline: per-segment drift and accuracy monitoring for ML models in production.

The public surface is what this module exports (guarded by tests/unit/test_public_api.py):

- ``Publisher``, ``PublishStats``: the publishing SDK for serving systems (needs only
  confluent-kafka and orjson, the plain install);
- ``__version__``.

Everything under ``driftline.stream`` and ``driftline.detectors`` is internal: importable, but it
may change between minor versions without notice. The worker, replay and the CLI need the
``worker`` extra (``pip install 'driftline[worker]'``).
"""
from __future__ import annotations

from importlib import metadata as _metadata

from driftline import _compiled

# Before any hot module is imported: load their compiled builds where one matches the source
# (driftline/_compiled.py; DRIFTLINE_PURE=1 runs pure).
_compiled.install()

try:
    __version__ = _metadata.version("driftline")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["Publisher", "PublishStats", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import driftline` (e.g. for __version__) costs nothing and pulls no Kafka client.
    if name in ("Publisher", "PublishStats"):
        from driftline.stream import publish

        return getattr(publish, name)
    raise AttributeError(f"module 'driftline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
