"""The compiled build of the hot modules (driftline/_compiled.py, docs/compiled.md).

It is loaded where it was built from the source being imported, never otherwise (an edited
source runs pure until it is rebuilt), it behaves as the pure modules do (checkpoints written by
one restore in the other), and DRIFTLINE_PURE=1 runs pure. These tests need the build that
deploy/setup makes: a build that fails or does not load fails them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from driftline import _compiled

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, *args: str, pure: bool = False) -> str:
    env = {k: v for k, v in os.environ.items() if k != _compiled.PURE_ENV}
    if pure:
        env[_compiled.PURE_ENV] = "1"
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return out.stdout


LOADED = """
import importlib, sys
from driftline import _compiled
for name in _compiled.HOT:
    importlib.import_module(name)
print(_compiled.summary())
for name in _compiled.HOT:
    print(name, sys.modules[name].__file__)
"""


def test_every_hot_module_loads_compiled_and_pure_on_request():
    compiled = run_python(LOADED).splitlines()
    assert compiled[0] == f"compiled ({len(_compiled.HOT)} modules)", "\n".join(compiled)
    files = dict(line.split(" ", 1) for line in compiled[1:])
    assert all(f.endswith(_compiled.EXT_SUFFIX) and "/__pycache__/" in f for f in files.values()), files
    pure = run_python(LOADED, pure=True).splitlines()
    assert pure[0] == "pure (DRIFTLINE_PURE=1)"
    assert all(f.endswith(".py") for f in dict(line.split(" ", 1) for line in pure[1:]).values())


# A copy of one hot module's package in a temporary directory, put first on the package's path.
FROM_COPY = """
import sys
import driftline.detectors
driftline.detectors.__path__.insert(0, sys.argv[1])
import driftline.detectors.tally as tally
from driftline import _compiled
print(tally.__file__)
print(_compiled.status()["driftline.detectors.tally"])
print(tally.Tally.__module__)
"""


def test_an_edited_source_runs_pure_until_it_is_rebuilt(tmp_path):
    import driftline.detectors

    source = Path(driftline.detectors.__path__[0]) / "tally.py"
    build = _compiled.cached_build(source)
    assert build.is_file(), f"no build of {source} (deploy/setup makes it)"
    copy = tmp_path / "tally.py"
    shutil.copyfile(source, copy)
    (tmp_path / "__pycache__").mkdir()
    shutil.copyfile(build, _compiled.cached_build(copy))  # the build of this very text

    loaded, how, module = run_python(FROM_COPY, str(tmp_path)).split()
    assert (loaded, how, module) == (str(_compiled.cached_build(copy)), "compiled", "driftline.detectors.tally")

    copy.write_text(copy.read_text() + "\n# edited after the build\n")
    loaded, how = run_python(FROM_COPY, str(tmp_path)).splitlines()[:2]
    assert loaded == str(copy)
    assert how == "pure: no build of this source (run deploy/setup)"

    # An extension module next to the source (an in-place `cythonize -i`) is not loaded either:
    # Python's own finder would prefer it to the edited .py.
    shutil.copyfile(build, tmp_path / f"tally{_compiled.EXT_SUFFIX}")
    assert run_python(FROM_COPY, str(tmp_path)).splitlines()[0] == str(copy)


# Half a stream into a bank, its snapshot written; then a bank restored from a snapshot fed the rest.
CHECKPOINT = """
import hashlib, random, sys
from driftline import _compiled
from driftline.detectors.bank import DetectorBank
from driftline.detectors.spec import ModelSpec

SPEC = ModelSpec(name="churn", segments=("region",), max_segments=3,
                 features={"tenure": "numeric", "plan": "categorical"}, accuracy_window=200)

def feed(bank, rate, start, n, seed):
    rng, found = random.Random(seed), []
    for i in range(start, start + n):
        pid = f"p-{i}"
        label = 1 if rng.random() >= rate else 0
        found += bank.observe_inference("churn", "region=eu", {"tenure": rng.gauss(10, 2), "plan": rng.choice("ab")},
                                        1, 0.9, float(i), pid)
        found += bank.observe_outcome("churn", "region=eu", 1, label, float(i), pid)
    return found

assert _compiled.summary().startswith(sys.argv[1]), _compiled.summary()
if sys.argv[2] == "write":
    bank = DetectorBank(lambda m: SPEC)
    feed(bank, 0.05, 0, 1500, seed=3)
    sys.stdout.write(bank.snapshot().hex())
else:
    bank = DetectorBank.restore(bytes.fromhex(sys.stdin.read()), lambda m: SPEC)
    records = [r.to_dict() for r in feed(bank, 0.4, 1500, 2500, seed=4)]
    assert any(r["signal"] == "error" for r in records)
    print(hashlib.sha256(repr(records).encode()).hexdigest(), hashlib.sha256(bank.snapshot()).hexdigest())
"""


def checkpoint_step(mode: str, step: str, blob: str = "") -> str:
    env = {k: v for k, v in os.environ.items() if k != _compiled.PURE_ENV}
    if mode == "pure":
        env[_compiled.PURE_ENV] = "1"
    out = subprocess.run([sys.executable, "-c", CHECKPOINT, mode, step], input=blob, capture_output=True,
                         text=True, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_checkpoints_written_compiled_restore_pure_and_the_reverse():
    written = {mode: checkpoint_step(mode, "write") for mode in ("compiled", "pure")}
    assert written["compiled"] == written["pure"]  # the same bytes
    resumed = {(w, r): checkpoint_step(r, "resume", written[w])
               for w in ("compiled", "pure") for r in ("compiled", "pure")}
    # Detections after the restore and the state at the end: the same, whichever build wrote or read.
    assert len(set(resumed.values())) == 1, resumed

