"""The optional compiled build of the hot modules, and the import hook that loads it.

The hot modules (`HOT`) are plain Python files; `python -m driftline._build_compiled` (run by
deploy/setup) compiles each with Cython into an extension module kept next to its source, in
the package's `__pycache__`, under a name that carries a hash of the source:

    detectors/__pycache__/bank.<key>.cpython-311-x86_64-linux-gnu.so
    key = sha256(BUILD_TAG, the .py file's bytes)

`install()` (run by `import driftline`, so before any hot module is imported) puts a finder in
front of the import system. For a hot module it hashes the .py file it would import and loads
the extension of that hash if it exists; otherwise the .py file, as always. An edited source has
another hash, so a compiled module built from an older text is never loaded: there is no stale
build to forget to remove. An extension module lying next to the source (`cythonize -i`) is
never loaded either: the finder picks the .py or the cached build, nothing else.

The compiled modules keep their full import names (`driftline.detectors.bank`): classes,
their `__module__`, and checkpoints are the same compiled or pure.

DRIFTLINE_PURE=1 runs pure (the finder is not installed): for cProfile, which sees no compiled
function, and for running the tests on the pure code. `status()` says, per hot module, what
was loaded and why; the worker logs it at start (`hot modules: ...`), and `python -m driftline._build_compiled
--status` prints it.
"""
from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

# The modules worth compiling: measured with bench/profile_bank.py and bench/profile_hot_path.py
# (docs/compiled.md has the figures). Anything else under driftline stays pure.
HOT: tuple[str, ...] = (
    "driftline.detectors.accuracy",
    "driftline.detectors.bank",
    "driftline.detectors.calibration",
    "driftline.detectors.classification",
    "driftline.detectors.drift",
    "driftline.detectors.estimate",
    "driftline.detectors.segments",
    "driftline.detectors.slices",
    "driftline.detectors.state",
    "driftline.detectors.tally",
    "driftline.detectors.join",
    "driftline.detectors.observations",
    "driftline.detectors.baseline",
    "driftline.detectors.categorical",
    "driftline.stream.pipeline",
    "driftline.stream.codec",
    "driftline.stream.ordering",
    "driftline.stream.eventtime",
    "driftline.stream.worker",
)

# What the build is made of besides the source: a change here (another Cython, other directives or
# flags) gives every module another key, so a build made the old way is not loaded.
CYTHON_VERSION = "3.3.1"
DIRECTIVES: dict[str, object] = {
    # Annotations stay documentation, as in CPython: `x: float` does not make x a C double (which
    # would turn an int argument into a float and reject None), so compiled == pure.
    "annotation_typing": False,
    "language_level": 3,
}
CFLAGS: tuple[str, ...] = ("-O2", "-g0")
BUILD_TAG = f"cython {CYTHON_VERSION}; {sorted(DIRECTIVES.items())}; {' '.join(CFLAGS)}"

PURE_ENV = "DRIFTLINE_PURE"
EXT_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]

_status: dict[str, str] = {}  # module -> "compiled" or why it runs pure (filled as modules are imported)


def build_key(source: bytes) -> str:
    return hashlib.sha256(BUILD_TAG.encode() + b"\0" + source).hexdigest()[:24]


def cached_build(source_path: Path, source: bytes | None = None) -> Path:
    """Where the compiled build of this exact source text lives (whether or not it exists)."""
    if source is None:
        source = source_path.read_bytes()
    stem = source_path.name[: -len(".py")]
    return source_path.parent / "__pycache__" / f"{stem}.{build_key(source)}{EXT_SUFFIX}"


def pure_requested() -> bool:
    return os.environ.get(PURE_ENV, "") not in ("", "0")


class CompiledFinder(importlib.abc.MetaPathFinder):
    """Finds a hot module's .py file on the package path; returns the spec of the build made
    from that exact text, or of the .py file when there is none."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in HOT or not path:
            return None
        leaf = fullname.rpartition(".")[2]
        for entry in path:
            source_path = Path(entry) / f"{leaf}.py"
            try:
                source = source_path.read_bytes()
            except OSError:
                continue
            built = cached_build(source_path, source)
            if built.is_file():
                _status[fullname] = "compiled"
                loader = importlib.machinery.ExtensionFileLoader(fullname, str(built))
                return importlib.util.spec_from_file_location(fullname, built, loader=loader)
            _status[fullname] = "pure: no build of this source (run deploy/setup)"
            return importlib.util.spec_from_file_location(fullname, source_path)
        return None


def install() -> None:
    """Put the finder first on sys.meta_path, once; not at all under DRIFTLINE_PURE=1."""
    if pure_requested() or any(isinstance(f, CompiledFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, CompiledFinder())


def status() -> dict[str, str]:
    """Per hot module: "compiled", or why it runs (or would run) pure. Modules not imported yet are
    looked up as an import would find them, without importing them."""
    out: dict[str, str] = {}
    for name in HOT:
        module = sys.modules.get(name)
        if pure_requested() and (module is None or not _is_extension(module)):
            out[name] = f"pure: {PURE_ENV}=1"
        elif module is not None:
            out[name] = "compiled" if _is_extension(module) else _status.get(name, "pure: imported before the finder")
        else:
            out[name] = _would_load(name)
    return out


def summary() -> str:
    """One line: 'compiled (10 modules)' or 'pure (...)' with the modules that are not compiled."""
    st = status()
    pure = {name: why for name, why in st.items() if why != "compiled"}
    if not pure:
        return f"compiled ({len(st)} modules)"
    if len(pure) == len(st) and len(set(pure.values())) == 1:
        return f"pure ({next(iter(pure.values()))[len('pure: '):]})"
    return (f"partly compiled ({len(st) - len(pure)} of {len(st)} modules); pure: "
            + ", ".join(f"{name} ({why[len('pure: '):]})" for name, why in pure.items()))


def _is_extension(module) -> bool:
    return isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader)


def _would_load(name: str) -> str:
    parent, _, leaf = name.rpartition(".")
    package = sys.modules.get(parent)
    if package is None:
        import importlib

        package = importlib.import_module(parent)
    for entry in package.__path__:
        source_path = Path(entry) / f"{leaf}.py"
        if source_path.is_file():
            return "compiled" if cached_build(source_path).is_file() else "pure: no build of this source (run deploy/setup)"
    return "pure: source not found"

