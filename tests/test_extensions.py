"""The extension cache: one build per key, killed builds never block, live builds are waited for.

The builds here compile tiny Python-C-API modules, not the kernels in csrc/: cpp_extension still
passes torch's include folders, but without torch/extension.h (or pybind11, ~9 s) a module
compiles in about half a second, so the cost of these tests is mostly starting Python processes.
"""

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipsonic.ops import extensions

NAME, SOURCE = "clipsonic_probe", "probe.cpp"
TINY = r"""
#include <Python.h>
#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)
#define CONCAT_(a, b) a##b
#define CONCAT(a, b) CONCAT_(a, b)
static PyObject* answer(PyObject*, PyObject*) { return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, "42"}, {nullptr, nullptr, 0, nullptr}};
static PyModuleDef definition = {PyModuleDef_HEAD_INIT, STRINGIFY(TORCH_EXTENSION_NAME), nullptr, -1, methods};
PyMODINIT_FUNC CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&definition); }
"""
# constexpr busywork: ~3 s of g++ on 2 cores, so that a test can stop the build mid-compile
SLOW = TINY + r"""
constexpr long spin(long rounds) {
  long total = 0;
  for (long i = 0; i < rounds; ++i)
    for (long j = 0; j < 100000; ++j) total += (i ^ j) & 1;
  return total;
}
static_assert(spin(10) >= 0, "evaluated while compiling");
"""
# One fresh process loading the probe: what a CLI run does on start-up.
LOAD = """
import json, logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(message)s")
import torch
from clipsonic.ops import extensions
start = time.monotonic()
module = extensions.load(sys.argv[1], (sys.argv[2],), source_dir=Path(sys.argv[3]))
print(json.dumps({"answer": module and module.answer(), "seconds": time.monotonic() - start,
                  "cpp_extension": "torch.utils.cpp_extension" in sys.modules}))
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private extension cache, seen by this process and the ones it starts."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(extensions.CACHE_VARIABLE, str(folder))
    return folder


def _sources(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True)
    (folder / SOURCE).write_text(text)
    return folder


def _start(source_dir: Path, **options) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LOAD, NAME, SOURCE, str(source_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options)


def _finish(process: subprocess.Popen, timeout: float = 120) -> tuple[dict, str]:
    """The load's report and its log, from a process that must succeed within `timeout` s."""
    out, log = process.communicate(timeout=timeout)
    assert process.returncode == 0, log
    return json.loads(out.splitlines()[-1]), log


def _mid_build(folder: Path, process: subprocess.Popen, dead: tuple[Path, ...] = ()) -> Path:
    """The temporary folder of `process`'s build (not one of the `dead` ones), once ninja is compiling in it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        started = [t for t in extensions.temporary_folders(folder) if t not in dead and (t / "build.ninja").exists()]
        if started:
            return started[0]
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.02)
    pytest.fail("the build never started")


def _lock_is_free(folder: Path) -> bool:
    with open(extensions.lock_path(folder)) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


@pytest.mark.slow
def test_a_killed_build_is_taken_over_and_a_live_one_waited_for(cache, tmp_path, caplog):
    source_dir = _sources(tmp_path / "csrc", SLOW)
    folder = extensions.build_folder(NAME, (SOURCE,), source_dir=source_dir)
    killed = _start(source_dir, start_new_session=True)
    try:
        dead = _mid_build(folder, killed)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)  # the whole job, compiler included, as `timeout` or an OOM kill leave it
        killed.communicate()
    assert extensions.temporary_folders(folder) == [dead] and not folder.exists()
    assert _lock_is_free(folder)  # the kernel dropped the dead process's lock

    builder = _start(source_dir)
    _mid_build(folder, builder, dead=(dead,))
    with caplog.at_level(logging.INFO, logger="clipsonic.ops.extensions"):
        module = extensions.load(NAME, (SOURCE,), source_dir=source_dir)  # arrives while `builder` compiles
    assert module is not None and module.answer() == 42
    messages = [record.getMessage() for record in caplog.records]
    assert any(f"waiting for process {builder.pid}, which is building" in message for message in messages), messages
    assert not any("compiling the" in message for message in messages)
    report, log = _finish(builder)
    assert report["answer"] == 42 and "compiling the clipsonic_probe extension" in log
    assert (folder / f"{NAME}.so").is_file() and extensions.temporary_folders(folder) == []


@pytest.mark.slow
def test_an_interrupted_build_cleans_up_after_itself(cache, tmp_path):
    source_dir = _sources(tmp_path / "csrc", SLOW)
    folder = extensions.build_folder(NAME, (SOURCE,), source_dir=source_dir)
    interrupted = _start(source_dir, start_new_session=True)
    try:
        _mid_build(folder, interrupted)
        os.killpg(interrupted.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground job
        interrupted.communicate(timeout=60)
    finally:
        if interrupted.poll() is None:
            os.killpg(interrupted.pid, signal.SIGKILL)
            interrupted.communicate()
    assert extensions.temporary_folders(folder) == [] and not folder.exists()
    assert _lock_is_free(folder)


def test_a_live_build_is_waited_for_a_bounded_time(cache, tmp_path, monkeypatch, caplog):
    source_dir = _sources(tmp_path / "csrc", TINY)
    folder = extensions.build_folder(NAME, (SOURCE,), source_dir=source_dir)
    folder.parent.mkdir(parents=True)
    monkeypatch.setenv(extensions.TIMEOUT_VARIABLE, "0.5")
    with open(extensions.lock_path(folder), "w") as held, \
            caplog.at_level(logging.INFO, logger="clipsonic.ops.extensions"):
        fcntl.flock(held, fcntl.LOCK_EX)  # another open file, so it blocks this process's load too
        held.write("4242\n")
        held.flush()
        start = time.monotonic()
        assert extensions.load(NAME, (SOURCE,), source_dir=source_dir) is None
        assert time.monotonic() - start < 5
    messages = [record.getMessage() for record in caplog.records]
    waits = [message for message in messages if "waiting for process 4242" in message]
    assert len(waits) == 1 and str(folder) in waits[0] and extensions.TIMEOUT_VARIABLE in waits[0]
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot be built" in warnings[0] and "using the PyTorch reference" in warnings[0]
    assert not any("compiling" in message for message in messages)
    assert not folder.exists() and extensions.temporary_folders(folder) == []


@pytest.mark.slow
def test_two_installs_alternating_share_one_build(cache, tmp_path):
    """An editable checkout and a wheel hold the same sources in different folders."""
    checkout, wheel = _sources(tmp_path / "checkout", TINY), _sources(tmp_path / "wheel", TINY)
    folder = extensions.build_folder(NAME, (SOURCE,), source_dir=checkout)
    assert extensions.build_folder(NAME, (SOURCE,), source_dir=wheel) == folder
    report, log = _finish(_start(checkout))
    assert report["answer"] == 42 and "compiling the clipsonic_probe extension" in log
    library = folder / f"{NAME}.so"
    built = library.stat()
    for source_dir in (wheel, checkout, wheel):
        report, log = _finish(_start(source_dir))
        assert report["answer"] == 42 and "compiling" not in log, log
        assert not report["cpp_extension"]  # a warm start neither runs ninja nor imports the build machinery
        assert report["seconds"] < 1.0
        assert (library.stat().st_ino, library.stat().st_mtime_ns) == (built.st_ino, built.st_mtime_ns)
    assert sorted(path.name for path in cache.iterdir()) == [folder.name, extensions.lock_path(folder).name]


def test_the_key_follows_sources_and_flags_not_the_install_location(cache, tmp_path, monkeypatch):
    here, there = _sources(tmp_path / "here", TINY), _sources(tmp_path / "there", TINY)
    edited = _sources(tmp_path / "edited", TINY + "// a comment\n")

    def folder(source_dir: Path = here, cuda: bool = False) -> Path:
        return extensions.build_folder(NAME, (SOURCE,), cuda=cuda, source_dir=source_dir)

    plain = folder()
    assert folder(there) == plain and plain.parent == cache and plain.name.startswith(NAME + "-")
    assert folder(edited) != plain
    for flags in ("CFLAGS", "LDFLAGS"):
        with monkeypatch.context() as patch:
            patch.setattr(extensions, flags, getattr(extensions, flags) + ("-g",))
            assert folder() != plain, flags
    # CUDA builds also depend on nvcc's flags and architectures (CUDA's headers faked: there are none here).
    monkeypatch.setattr(extensions, "_include_paths", lambda cuda: ["/cuda/include"] if cuda else [])
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    cpu, ampere = folder(), folder(cuda=True)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    hopper = folder(cuda=True)
    assert len({cpu, ampere, hopper}) == 3 and folder() == cpu
    monkeypatch.setattr(extensions, "CUDA_CFLAGS", ("-O2",))
    assert folder(cuda=True) != hopper and folder() == cpu
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "9.0"

def test_cpu_include_paths_are_torchs():
    from torch.utils import cpp_extension

    assert extensions._include_paths(cuda=False) == cpp_extension.include_paths("cpu")
