"""Builds the compiled hot modules that driftline._compiled loads (see its docstring).

    python -m driftline._build_compiled [--jobs N] [--clean] [--status [-v]]

Compiles each module of `HOT` whose current source has no build yet (Cython in pure-Python mode
on the .py file itself, then the C compiler through setuptools), and removes the builds of
older texts of those modules. Quick when nothing changed: it only hashes the sources. Needs
Cython (the `compiled` extra) and a C compiler with the Python headers; without them it says so
and exits 0: driftline runs pure. `--clean` removes every build (driftline runs pure).
`--status` prints what an import would load (`-v`: per module).
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from driftline import _compiled
from driftline._compiled import CFLAGS, CYTHON_VERSION, DIRECTIVES, EXT_SUFFIX, HOT, cached_build


def sources() -> dict[str, Path]:
    """Each hot module's .py file, where `import` finds it (the package path: editable or not)."""
    out: dict[str, Path] = {}
    for name in HOT:
        parent, _, leaf = name.rpartition(".")
        for entry in importlib.import_module(parent).__path__:
            path = Path(entry) / f"{leaf}.py"
            if path.is_file():
                out[name] = path
                break
        else:
            raise SystemExit(f"build: {name}: no source file on {parent}'s path")
    return out


def _older_builds(source_path: Path, keep: Path) -> list[Path]:
    stem = source_path.name[: -len(".py")]
    return [p for p in (source_path.parent / "__pycache__").glob(f"{stem}.*{EXT_SUFFIX}") if p != keep]


def clean() -> int:
    removed = 0
    for path in sources().values():
        for old in _older_builds(path, keep=Path()):
            old.unlink(missing_ok=True)
            removed += 1
    print(f"build: removed {removed} compiled modules; driftline runs pure", file=sys.stderr)
    return 0


def build(jobs: int) -> int:
    todo: list[tuple[str, Path, bytes, Path]] = []
    for name, path in sources().items():
        text = path.read_bytes()
        target = cached_build(path, text)
        for old in _older_builds(path, keep=target):
            old.unlink(missing_ok=True)
        if not target.is_file():
            todo.append((name, path, text, target))
    if not todo:
        return 0
    try:
        import Cython
        from Cython.Build import cythonize
        from setuptools import Distribution, Extension
    except ImportError as exc:
        print(f"build: compiled modules not built ({exc}): driftline runs pure "
              f"(pip install -e '.[compiled]' to build them)", file=sys.stderr)
        return 0
    if Cython.__version__ != CYTHON_VERSION:
        print(f"build: Cython {Cython.__version__} is installed, the build is pinned to {CYTHON_VERSION} "
              f"(driftline._compiled.CYTHON_VERSION): not built, driftline runs pure", file=sys.stderr)
        return 1
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="driftline-build-") as tmp:
        exts = [Extension(name, [str(path)], extra_compile_args=list(CFLAGS)) for name, path, _, _ in todo]
        # The Extension's name is the module's full import name: Cython compiles it as
        # driftline.detectors.bank (classes' __module__, relative imports), not detectors.bank.
        exts = cythonize(exts, build_dir=f"{tmp}/c", compiler_directives=dict(DIRECTIVES), quiet=True,
                         force=True, nthreads=jobs if jobs > 1 else 0)
        dist = Distribution({"name": "driftline-compiled", "ext_modules": exts})
        cmd = dist.get_command_obj("build_ext")
        cmd.build_lib, cmd.build_temp, cmd.parallel = f"{tmp}/lib", f"{tmp}/tmp", jobs
        cmd.ensure_finalized()
        cmd.run()
        for name, path, text, target in todo:
            if path.read_bytes() != text:  # edited while it compiled: this build is of an older text
                print(f"build: {name} changed during the build; not installed", file=sys.stderr)
                continue
            built = Path(tmp, "lib", *name.split(".")).with_suffix(EXT_SUFFIX)
            target.parent.mkdir(exist_ok=True)
            partial = target.with_name(target.name + f".{os.getpid()}.part")
            shutil.copyfile(built, partial)
            partial.replace(target)  # atomic: an import sees no build or a whole one
    print(f"build: compiled {len(todo)} modules in {time.monotonic() - started:.0f} s "
          f"({', '.join(n.rpartition('.')[2] for n, *_ in todo)})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m driftline._build_compiled", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compilations (default: CPUs)")
    parser.add_argument("--clean", action="store_true", help="remove every compiled module (run pure)")
    parser.add_argument("--status", action="store_true", help="say what an import would load, and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="with --status: per module")
    args = parser.parse_args(argv)
    if args.status:
        if args.verbose:
            for name, how in _compiled.status().items():
                print(f"{name}: {how}")
        print(_compiled.summary())
        return 0
    return clean() if args.clean else build(args.jobs)


if __name__ == "__main__":
    sys.exit(main())
