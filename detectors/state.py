"""Snapshots of core state as versioned bytes that do not depend on Python module paths.

A checkpoint must survive a rename of one of our modules and an upgrade of driftline or River,
or the fleet stops at the next rebalance. So state is not pickled (a pickle names class paths,
and River 0.25 broke loading pickles of earlier versions): each core object gives its plain
resume state, a tree of JSON values, under a stable *name* that is independent of where the
class lives, and is rebuilt from it.

The interface (what stream/checkpoint.py stores and the worker restores):

    encode_state(state) -> bytes                    # raises StateError for an unregistered object
    decode_state(blob)  -> state | Unreadable       # never raises on bad or old bytes

Bytes, format 2:

    b"DLS2" + zlib(orjson({"format": 2, "driftline": "0.1.0", "river": "0.26.1", "state": TREE}))

Format 3, written only for state that holds `Attached` bytes (a bank's held observations,
stream/eventtime.py), is format 2 with those bytes appended raw after the zlib stream, in order,
and their lengths in the document:

    b"DLS2" + zlib(orjson({"format": 3, ..., "attached": [n1, n2, ...], "state": TREE})) + a1 + a2 ...

`Attached` bytes are already compressed: inside the JSON they would be base64 that the outer zlib
compresses again at every snapshot, as slowly as the first time and for nothing. A reader of format
2 only (driftline before issue 18j) finds `Unreadable("format")` and rebuilds the partition.

TREE is JSON; what JSON lacks is a one-key object whose key starts with "$":

    {"$d": [k1, v1, k2, v2, ...]}   a dict (any keys)        {"$t": [...]}   a tuple
    {"$s": [...]}   a set                                    {"$c": [k, n, ...]}  a Counter
    {"$b": "base64"}  bytes    {"$ba": "base64"}  bytearray   {"$f": "inf" | "-inf" | "nan"}
    {"$x": I}       `Attached` bytes: the I-th attachment (format 3), read back as bytes
    {"$a": ["d", "base64"]}    an array.array (little-endian)
    {"$nd": ["<f8", [16, 16], "base64"]}  a numpy array (numpy scalars are stored as Python values)
    {"$o": NAME, "v": VERSION, "id": N, "f": {field: TREE}}  a registered object
    {"$r": N}       the same object again (shared objects stay shared; cycles are fine)
    {"$river": ["0.26.1", "base64"]}  a River object, in River's own serialisation

River objects (detectors inside our wrappers) are River's business: they are restored only under
the River version that wrote them. Under another version, or an unknown format, object name or
object version, `decode_state` returns `Unreadable(reason, detail)`, and the worker rebuilds that
partition from its retained history instead of crashing (stream/worker.py, docs/guarantees.md).

Format 1 (b"DLS1", zlib + pickle, driftline 0.1.0 before issue 15) is never unpickled: it is
`Unreadable("format")`. tests/fixtures/checkpoints/ keeps real checkpoints of it.

How to add a state object (issues 16, 17, 19: slices, LLM sketches, confusion matrices, ...):

1. Decorate the class with `@persistent("bank.my_thing")`. The name is forever: never reuse or
   rename it; moving or renaming the class is free.
2. Its fields are captured by name: every `__slots__` entry (or `__dict__` entry) must hold
   plain values (None, bool, int, float, str, bytes, list, tuple, dict, set, Counter, array,
   numpy arrays) or other persistent objects. Configuration (spec lookups, callables, settings) is not state:
   leave it out with `__getstate__` / `__setstate__` (a dict of fields), as DetectorBank does,
   and bind it again after the restore.
3. Adding a field later: give it a default, `@persistent("bank.my_thing", defaults={"new": 0})`,
   and old checkpoints still restore. Changing what a field means: bump `version=`; checkpoints
   of the old version are then Unreadable and rebuilt by replay (or give the class an
   `upgrade_state(version, fields) -> fields` classmethod that converts them).
4. Add your object to a bank in tests/unit/test_state.py's round trip: `encode_state` refuses
   (StateError, naming the class) any object that is not registered.
"""
from __future__ import annotations

import array
import base64
import dataclasses
import functools
import gc
import math
import pickle
import zlib
from collections import Counter
from typing import Any, Callable, Mapping, NamedTuple

import orjson

FORMAT = 2
ATTACHED_FORMAT = 3  # format 2 with Attached bytes after the zlib stream
MAGIC = b"DLS2"
STORED = 1  # zlib level: see encode_state
OLD_MAGIC = b"DLS1"


class Attached(bytes):
    """Bytes a snapshot stores beside its compressed JSON, not inside it (format 3): for bytes
    that are compressed already. Restored as plain bytes."""

    __slots__ = ()


class StateError(TypeError):
    """State that cannot be encoded: a programming error (an unregistered class), not bad input."""


class SnapshotError(ValueError):
    """Raised by `restore` (the raising form of `decode_state`) for bytes it cannot restore."""


class Unreadable(NamedTuple):
    """A snapshot that cannot be restored, and why; the worker rebuilds the partition instead.

    reason: "format" (not format 2: an older driftline, or foreign bytes), "corrupt" (bad
    compression or JSON), "river" (River objects written by another River version),
    "unknown_object" (a name this driftline does not know), "object_version" (an object
    version it cannot read), "fields" (fields that do not fit the class).
    """

    reason: str
    detail: str


class _Kind(NamedTuple):
    cls: type
    version: int
    defaults: Mapping[str, Any]


_BY_NAME: dict[str, _Kind] = {}
_NAME_OF: dict[type, str] = {}


def persistent(name: str, version: int = 1, defaults: Mapping[str, Any] | None = None) -> Callable[[type], type]:
    """Register a class as state under `name` (see the module docstring: how to add an object)."""

    def register(cls: type) -> type:
        if name in _BY_NAME and _BY_NAME[name].cls is not cls:
            raise ValueError(f"state name {name!r} is taken by {_BY_NAME[name].cls.__qualname__}")
        _BY_NAME[name] = _Kind(cls, version, dict(defaults or {}))
        _NAME_OF[cls] = name
        return cls

    return register


@functools.cache
def _slots(cls: type) -> tuple[str, ...]:
    out: list[str] = []
    for k in reversed(cls.__mro__):
        s = k.__dict__.get("__slots__", ())
        out.extend((s,) if isinstance(s, str) else s)
    return tuple(n for n in out if n not in ("__weakref__", "__dict__"))


def _custom_state(cls: type) -> bool:
    """True if the class chooses its resume state (its own __getstate__/__setstate__; those that
    dataclass(slots=True) generates do not count: a dataclass's state is its fields)."""
    return (cls.__getstate__ is not object.__getstate__ and hasattr(cls, "__setstate__")
            and not dataclasses.is_dataclass(cls))


_MISSING = object()


# -- encoding ---------------------------------------------------------------------------------------
class _Encoder:
    def __init__(self) -> None:
        self.ids: dict[int, int] = {}
        self.keep: list[object] = []  # holds encoded objects alive, so their id()s stay unique
        self.attached: list[bytes] = []  # Attached bytes, in the order of their "$x" indexes

    def enc(self, v: Any) -> Any:
        t = type(v)
        if t is str or t is int or t is bool or v is None:
            return v
        if t is float:
            return v if math.isfinite(v) else {"$f": repr(v)}
        if t is list:
            return self.seq(v)
        if t is dict:
            # The hot case inlined (a checkpoint walks every join entry and window every second):
            # str/int keys and plain values are themselves, tuples of plain values a "$t" list.
            out: list = []
            app, enc, seq = out.append, self.enc, self.seq
            for k, x in v.items():
                tk = type(k)
                app(k if tk is str or tk is int else enc(k))
                tx = type(x)
                if tx is str or tx is int or tx is bool or x is None or (tx is float and x - x == 0.0):
                    app(x)
                elif tx is tuple:
                    app({"$t": seq(x)})
                else:
                    app(enc(x))
            return {"$d": out}
        if t is tuple:
            return {"$t": self.seq(v)}
        if t is Counter:
            out = []
            for k, x in v.items():
                out.append(self.enc(k))
                out.append(self.enc(x))
            return {"$c": out}
        if t is set or t is frozenset:
            return {"$s": [self.enc(x) for x in v]}
        if t is bytes:
            return {"$b": base64.b64encode(v).decode()}
        if t is Attached:
            self.attached.append(v)
            return {"$x": len(self.attached) - 1}
        if t is bytearray:
            return {"$ba": base64.b64encode(v).decode()}
        if t is array.array:
            a = v if v.itemsize == 1 or _LITTLE else _swapped(v)
            return {"$a": [v.typecode, base64.b64encode(a.tobytes()).decode()]}
        name = _NAME_OF.get(t)
        if name is not None:
            return self.obj(v, name)
        top = t.__module__.split(".")[0]
        if top == "numpy":
            import numpy as np

            if t is np.ndarray:
                a = np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("<"))
                return {"$nd": [a.dtype.str, list(a.shape), base64.b64encode(a.tobytes()).decode()]}
            if isinstance(v, np.generic):  # a numpy scalar: its Python value
                return self.enc(v.item())
        if top == "river":
            import river

            return {"$river": [river.__version__, base64.b64encode(pickle.dumps(v, protocol=4)).decode()]}
        raise StateError(f"{t.__module__}.{t.__qualname__} is not registered as state: "
                         f"decorate it with @persistent(name) (see driftline/detectors/state.py)")

    def seq(self, v: list | tuple) -> list:
        """The items of a list or tuple, encoded: a copy as is when every one is a plain value
        (str, int, bool, None, a finite float: JSON as they are), without a call per item."""
        for x in v:
            tx = type(x)
            if not (tx is str or tx is int or tx is bool or x is None or (tx is float and x - x == 0.0)):
                break
        else:
            return list(v)
        # Not all plain: each item on its own, tuples of plain values (heap entries) inlined.
        enc = self.enc
        out = []
        app = out.append
        for y in v:
            if type(y) is tuple:
                for x in y:
                    tx = type(x)
                    if not (tx is str or tx is int or tx is bool or x is None or (tx is float and x - x == 0.0)):
                        app(enc(y))
                        break
                else:
                    app({"$t": list(y)})
            else:
                app(enc(y))
        return out

    def obj(self, v: Any, name: str) -> Any:
        key = id(v)
        ref = self.ids.get(key)
        if ref is not None:
            return {"$r": ref}
        n = self.ids[key] = len(self.ids)
        self.keep.append(v)
        cls = type(v)
        if _custom_state(cls):
            fields = v.__getstate__()
            if not isinstance(fields, dict):
                raise StateError(f"{cls.__qualname__}.__getstate__ must return a dict of fields")
        elif hasattr(v, "__dict__"):
            fields = dict(vars(v))
        else:
            fields = {}
            for f in _slots(cls):
                x = getattr(v, f, _MISSING)
                if x is not _MISSING:
                    fields[f] = x
        kind = _BY_NAME[name]
        return {"$o": name, "v": kind.version, "id": n, "f": {f: self.enc(x) for f, x in fields.items()}}


_LITTLE = array.array("H", [1]).tobytes() == b"\x01\x00"


def _swapped(a: array.array) -> array.array:
    b = array.array(a.typecode, a)
    b.byteswap()
    return b


def encode_state(state: Any) -> bytes:
    """State (plain values and registered objects) as format-2 bytes."""
    import driftline

    try:
        import river

        river_version = river.__version__
    except ModuleNotFoundError:  # pragma: no cover - the worker always has River
        river_version = None
    encoder = _Encoder()
    with no_gc():
        tree = encoder.enc(state)
    doc = {"format": FORMAT, "driftline": driftline.__version__, "river": river_version, "state": tree}
    if encoder.attached:
        doc["format"] = ATTACHED_FORMAT
        doc["attached"] = [len(a) for a in encoder.attached]
    # Level 1, not 0: stored blocks (level 0) cost 6x less CPU on the loop (48 vs 306 ms for
    # 11.9 MB of held records) but made a segment's checkpoint 15x larger (4.7 vs 0.3 KiB,
    # bench/perf.py memory), and a backlog worker was no faster end to end (bench/perf.py
    # --throughput-only, consecutive runs: 2,897 events/s at level 0, 3,523 at level 1, the same
    # events per CPU second).
    return b"".join([MAGIC, zlib.compress(orjson.dumps(doc), STORED), *encoder.attached])


class no_gc:
    """Python's cyclic collector off for a block that builds many small containers and no cyclic
    garbage: collections during it (each scans what the process holds) would take much of its
    time. Here: the checkpoint walks (they scan the whole bank); stream/replay.py: decoding the
    files."""

    def __enter__(self) -> None:
        self.was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.was:
            gc.enable()


# -- decoding ---------------------------------------------------------------------------------------
class _Incompatible(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class _Decoder:
    def __init__(self, attached: list[bytes] | None = None) -> None:
        self.objects: dict[int, object] = {}
        self.attached = attached or []

    def dec(self, v: Any) -> Any:
        t = type(v)
        if t is list:
            return [self.dec(x) for x in v]
        if t is not dict:
            return v
        if "$o" in v:
            return self.obj(v)
        if len(v) != 1:
            raise _Incompatible("corrupt", f"an object with keys {sorted(v)[:4]} is no tagged value")
        ((tag, x),) = v.items()
        if tag == "$d":
            return {self.dec(x[i]): self.dec(x[i + 1]) for i in range(0, len(x), 2)}
        if tag == "$t":
            return tuple(self.dec(y) for y in x)
        if tag == "$c":
            return Counter({self.dec(x[i]): self.dec(x[i + 1]) for i in range(0, len(x), 2)})
        if tag == "$s":
            return {self.dec(y) for y in x}
        if tag == "$b":
            return base64.b64decode(x)
        if tag == "$ba":
            return bytearray(base64.b64decode(x))
        if tag == "$f":
            return float(x)
        if tag == "$a":
            a = array.array(x[0], base64.b64decode(x[1]))
            if a.itemsize > 1 and not _LITTLE:  # pragma: no cover - no big-endian machines here
                a.byteswap()
            return a
        if tag == "$r":
            return self.objects[x]
        if tag == "$x":
            if type(x) is not int or not 0 <= x < len(self.attached):
                raise _Incompatible("corrupt", f"attachment {x!r} of {len(self.attached)}")
            return self.attached[x]
        if tag == "$nd":
            import numpy as np

            dtype, shape, data = x
            return np.frombuffer(base64.b64decode(data), dtype=np.dtype(dtype)).reshape(shape).astype(
                np.dtype(dtype).newbyteorder("="))
        if tag == "$river":
            return self.river(x)
        raise _Incompatible("corrupt", f"unknown tag {tag!r}")

    def obj(self, v: dict) -> Any:
        name, version, fields = v["$o"], v["v"], v["f"]
        kind = _BY_NAME.get(name)
        if kind is None:
            raise _Incompatible("unknown_object", f"no state object named {name!r} in this driftline")
        cls = kind.cls
        inst = cls.__new__(cls)
        self.objects[v["id"]] = inst  # before the fields: they may refer back to it
        values = {f: self.dec(x) for f, x in fields.items()}
        if version != kind.version:
            upgrade = getattr(cls, "upgrade_state", None)
            if upgrade is None:
                raise _Incompatible("object_version", f"{name} version {version}, this driftline reads "
                                                      f"version {kind.version}")
            values = upgrade(version, values)
        for f, d in kind.defaults.items():
            values.setdefault(f, d)
        if _custom_state(cls):
            inst.__setstate__(values)
            return inst
        if hasattr(inst, "__dict__"):
            inst.__dict__.update(values)
            return inst
        slots = _slots(cls)
        unknown = set(values) - set(slots)
        if unknown:
            raise _Incompatible("fields", f"{name} has no fields {sorted(unknown)}")
        missing = [f for f in slots if f not in values]
        if missing:
            raise _Incompatible("fields", f"{name} misses fields {missing} (give them defaults)")
        for f, x in values.items():
            object.__setattr__(inst, f, x)  # also for frozen dataclasses
        return inst

    def river(self, x: list) -> Any:
        import river

        written, blob = x
        if written != river.__version__:
            raise _Incompatible("river", f"River objects written by River {written}, running {river.__version__}")
        return pickle.loads(base64.b64decode(blob))


def decode_state(blob: bytes) -> Any:
    """The state `encode_state` wrote, or `Unreadable(reason, detail)`; never raises for bad bytes."""
    if blob[:4] == OLD_MAGIC:
        return Unreadable("format", "format 1 (a pickle, written by driftline 0.1.0 before issue 15) is never read")
    if blob[:4] != MAGIC:
        return Unreadable("format", f"not a driftline snapshot (header {blob[:4]!r}, expected {MAGIC!r})")
    try:
        inflate = zlib.decompressobj()
        doc = orjson.loads(inflate.decompress(blob[4:]))
        if not inflate.eof:
            raise zlib.error("the compressed document is truncated")
    except (zlib.error, orjson.JSONDecodeError) as exc:
        return Unreadable("corrupt", f"corrupt driftline snapshot: {exc}")
    if not isinstance(doc, dict) or doc.get("format") not in (FORMAT, ATTACHED_FORMAT) or "state" not in doc:
        return Unreadable("format", f"snapshot format {doc.get('format') if isinstance(doc, dict) else '?'}, "
                                    f"this driftline reads formats {FORMAT} and {ATTACHED_FORMAT}")
    attached = _attachments(doc, inflate.unused_data)
    if type(attached) is Unreadable:
        return attached
    try:
        with no_gc():
            return _Decoder(attached).dec(doc["state"])
    except _Incompatible as exc:
        return Unreadable(exc.reason, str(exc))
    except Exception as exc:  # anything else in the bytes we cannot use: rebuild, never crash
        return Unreadable("fields", f"snapshot written by driftline {doc.get('driftline')} does not fit: {exc!r}")


def _attachments(doc: dict, rest: bytes) -> list[bytes] | Unreadable:
    """The Attached bytes after the compressed document (format 3), split by their lengths."""
    if doc["format"] == FORMAT:
        return []  # what follows a format-2 document was never read (zlib.decompress's way)
    sizes = doc.get("attached")
    if type(sizes) is not list or any(type(n) is not int or n < 0 for n in sizes) or sum(sizes) != len(rest):
        return Unreadable("corrupt", f"attachments of {len(rest)} bytes do not match their lengths")
    out, at = [], 0
    for n in sizes:
        out.append(rest[at:at + n])
        at += n
    return out


# -- the raising forms, for callers that hold their own bytes (tests, bench, objects' restore()) ----
def snapshot(state: Any) -> bytes:
    return encode_state(state)


def restore(blob: bytes) -> Any:
    state = decode_state(blob)
    if type(state) is Unreadable:
        raise SnapshotError(f"cannot restore snapshot ({state.reason}): {state.detail}")
    return state
