"""Lazy builds of the C++/CUDA extensions in csrc/: compiled with ninja on first use into a cache.

The cache (`$CLIPSONIC_EXTENSIONS`, default `~/.cache/clipsonic/extensions`) holds, per extension:

    <name>-<key>/            a finished build: <name>.so, the sources it was built from, key.json
    <name>-<key>.lock        flock'ed by the process building <name>-<key>; holds that process's pid
    <name>-<key>.tmp-XXXX/   a build in progress, or what a killed build left behind

The key hashes what the library depends on: the sources' names and contents, the compiler flags
(`CFLAGS`, `LDFLAGS`, `CUDA_CFLAGS`), torch's include folders, torch's version, the Python ABI, the
CPU (the flags say -march=native) and, for CUDA, the architectures compiled for. It does not hash
where clipsonic is installed: the sources are copied into the build folder first, so an editable
checkout and a wheel of the same code share one build instead of recompiling each other's.

A warm start imports `<name>.so` directly: no ninja run and no import of torch.utils.cpp_extension.
A cold start takes the lock, builds in a private temporary folder and renames it into place, so a
`<name>-<key>/` folder is always complete. The lock is an flock, which the kernel drops when its
holder dies: a build killed mid-way (Ctrl-C, kill -9, `timeout`, OOM) never blocks the next run,
which deletes the dead build's folder and starts over. A live builder is waited for, at most
`$CLIPSONIC_BUILD_TIMEOUT` seconds (default 600). When a build is impossible (no compiler, no ninja,
a compile error, the wait timed out), the reason is logged once and callers fall back to the
reference op. `TORCH_CUDA_ARCH_LIST` is left as the user set it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import sysconfig
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from types import ModuleType

from clipsonic.fileio import LockHeld, LockHolder, exclusive_lock

log = logging.getLogger(__name__)
CACHE_VARIABLE = "CLIPSONIC_EXTENSIONS"
TIMEOUT_VARIABLE = "CLIPSONIC_BUILD_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
CFLAGS = ("-O3", "-fopenmp", "-march=native", "-ffp-contract=fast")
LDFLAGS = ("-fopenmp",)
CUDA_CFLAGS = ("-O3",)
_SECONDS_PER_SOURCE = 40  # measured: group_norm_cpu.cpp takes ~35 s on 2 cores, torch's headers most of it
_POLL_S = 0.2  # how often a waiting process retries the lock
_TEMPORARY = ".tmp-"  # between a finished folder's name and mkdtemp's random suffix


def source_folder() -> Path:
    from importlib import resources

    return Path(str(resources.files("clipsonic.csrc")))


def cache_folder() -> Path:
    configured = os.environ.get(CACHE_VARIABLE)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "clipsonic" / "extensions"


def _machine_fingerprint() -> str:
    try:
        model = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        model = ""
    return f"{platform.machine()}|{platform.processor()}|{model}"


def _include_paths(cuda: bool) -> list[str]:
    """The header folders torch compiles an extension against: `cpp_extension.include_paths`.

    For CPU builds they are read here instead, because importing cpp_extension (setuptools with it)
    costs ~0.2 s of every warm start; tests/test_extensions.py checks the two agree. CUDA builds ask
    cpp_extension, which knows where CUDA lives (and CUDA's start-up dwarfs that import)."""
    if cuda:
        from torch.utils import cpp_extension

        return cpp_extension.include_paths("cuda")
    import torch

    headers = Path(torch.__file__).parent / "include"
    return [str(headers), str(headers / "torch" / "csrc" / "api" / "include")]


def _cuda_architectures() -> str:
    """What nvcc compiles for: `TORCH_CUDA_ARCH_LIST` when set, else (as cpp_extension does) the visible GPUs."""
    configured = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if configured:
        return configured
    import torch

    capabilities = (torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count()))
    return ";".join(f"{major}.{minor}" for major, minor in capabilities)


def _read_sources(sources: tuple[str, ...], source_dir: Path | None) -> dict[str, bytes]:
    """source name -> contents, read once: the key hashes the very bytes that get compiled."""
    folder = source_folder() if source_dir is None else Path(source_dir)
    return {source: (folder / source).read_bytes() for source in sources}


def _description(contents: dict[str, bytes], cuda: bool) -> dict:
    """Everything the built library depends on (hashed into the key, and saved as key.json)."""
    import torch

    return {
        "sources": {source: hashlib.sha256(data).hexdigest() for source, data in contents.items()},
        "cflags": CFLAGS, "ldflags": LDFLAGS, "cuda_cflags": CUDA_CFLAGS if cuda else None,
        "include_paths": _include_paths(cuda),
        "torch": [torch.__version__, getattr(torch.version, "git_version", "")],
        "python": sysconfig.get_config_var("EXT_SUFFIX"),  # e.g. .cpython-312-x86_64-linux-gnu.so: version and ABI
        "machine": _machine_fingerprint(),
        "cuda_architectures": _cuda_architectures() if cuda else None,
    }


def _folder(name: str, description: dict) -> Path:
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
    return cache_folder() / f"{name}-{key}"


def build_folder(name: str, sources: tuple[str, ...], cuda: bool = False, source_dir: Path | None = None) -> Path:
    """Where the finished build of extension `name` lives: `cache_folder()/<name>-<key>`."""
    return _folder(name, _description(_read_sources(sources, source_dir), cuda))


def lock_path(folder: Path) -> Path:
    """The lock file guarding the build of `folder` (a `build_folder`)."""
    return folder.with_name(folder.name + ".lock")


def temporary_folders(folder: Path) -> list[Path]:
    """Builds of `folder` in progress, or left behind by killed builders."""
    return sorted(folder.parent.glob(folder.name + _TEMPORARY + "*"))


@contextmanager
def _build_lock(folder: Path, name: str) -> Iterator[None]:
    """Hold the lock on building `folder`, waiting at most $CLIPSONIC_BUILD_TIMEOUT s for a live holder."""
    timeout = float(os.environ.get(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT_S))

    def waiting(holder: LockHolder) -> None:
        log.info("waiting for %s, which is building the %s extension in %s (at most %g s; %s sets that)",
                 holder.process, name, folder, timeout, TIMEOUT_VARIABLE)

    try:
        with exclusive_lock(lock_path(folder), timeout, _POLL_S, waiting):
            yield
    except LockHeld as held:
        raise TimeoutError(f"{held.holder.process} was still building it in {folder} after {timeout:g} s "
                           f"(${TIMEOUT_VARIABLE})") from None


def _ninja_on_path() -> None:
    """torch finds ninja on PATH; the `ninja` package (a dependency) may have put it elsewhere."""
    if shutil.which("ninja") is None:
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except (ImportError, AttributeError):
            pass  # no ninja package either: the build will fail and say so


def _build(name: str, contents: dict[str, bytes], cuda: bool, description: dict, folder: Path) -> None:
    """Compile `contents` in a private folder and rename it to `folder`. Call it holding the lock."""
    import torch
    from torch.utils import cpp_extension

    _ninja_on_path()
    for leftover in temporary_folders(folder):
        shutil.rmtree(leftover, ignore_errors=True)  # we hold the lock, so its builder is dead
    if folder.exists():
        shutil.rmtree(folder)  # a finished folder without its library (emptied by hand) would block the rename
    log.info("compiling the %s extension (%s) once for this machine and torch %s: about %d s; cached in %s",
             name, ", ".join(contents), torch.__version__, _SECONDS_PER_SOURCE * len(contents), folder)
    temporary = Path(tempfile.mkdtemp(prefix=folder.name + _TEMPORARY, dir=folder.parent))
    try:
        for source, data in contents.items():
            (temporary / source).parent.mkdir(parents=True, exist_ok=True)
            (temporary / source).write_bytes(data)
        (temporary / "key.json").write_text(json.dumps(description, indent=1, sort_keys=True) + "\n")
        # is_python_module=False: torch dlopens the library without initialising the Python module,
        # which `_import` does once from its final path (the same file after the rename).
        built = cpp_extension.load(name=name, sources=[str(temporary / source) for source in contents],
                                   build_directory=str(temporary), extra_cflags=list(CFLAGS),
                                   extra_ldflags=list(LDFLAGS), extra_cuda_cflags=list(CUDA_CFLAGS) if cuda else None,
                                   with_cuda=cuda, is_python_module=False, verbose=False)
        if Path(built).name != f"{name}.so":  # torch renames a second build of one name in a process `<name>_v1`
            raise RuntimeError(f"torch built {Path(built).name}, not {name}.so: {name} was built before in this process")
        temporary.chmod(0o755)  # mkdtemp's 0o700 would hide a shared cache from its other users
        try:
            os.rename(temporary, folder)
        except OSError:
            if not (folder / f"{name}.so").is_file():
                raise
            # someone else's finished build appeared meanwhile: keep it, ours goes below
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # nothing left to remove after a successful rename


def _import(name: str, library: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, library)
    if spec is None or spec.loader is None:
        raise ImportError(f"{library} is not an extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=None)
def load(name: str, sources: tuple[str, ...], cuda: bool = False, source_dir: Path | None = None) -> ModuleType | None:
    """The compiled extension `name` from `sources` (file names in csrc/, or in `source_dir`), or
    None when it cannot be built; the reason is logged once per process and extension."""
    try:
        contents = _read_sources(sources, source_dir)
        description = _description(contents, cuda)
        folder = _folder(name, description)
        library = folder / f"{name}.so"
        if not library.is_file():
            with _build_lock(folder, name):
                if not library.is_file():  # else the process we waited for built it
                    _build(name, contents, cuda, description, folder)
        return _import(name, library)
    except Exception as error:  # any failure means: use the reference, and say why once
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        first = next((line for line in lines if "error:" in line), lines[0] if lines else type(error).__name__)
        log.warning("the %s extension cannot be built (%s); using the PyTorch reference", name, first)
        return None
