"""Lazy builds of the C++/CUDA extensions in csrc/: compiled with ninja on first use into a cache.

The build folder is keyed by the sources, torch's version and the machine, so a changed
source or another machine rebuilds. When a build is impossible (no compiler, no ninja, a
compile error), the reason is logged once and callers fall back to the reference op.
`TORCH_CUDA_ARCH_LIST` is left as the user set it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
from functools import lru_cache
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)
CACHE_VARIABLE = "CLIPSONIC_EXTENSIONS"


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


def _ninja_on_path() -> None:
    """torch finds ninja on PATH; the `ninja` package (a dependency) may have put it elsewhere."""
    if shutil.which("ninja") is None:
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except (ImportError, AttributeError):
            pass  # no ninja package either: the build will fail and say so


@lru_cache(maxsize=None)
def load(name: str, sources: tuple[str, ...], cuda: bool = False) -> ModuleType | None:
    """The compiled extension `name` from csrc/`sources`, or None (reason logged once)."""
    try:
        import torch
        from torch.utils import cpp_extension

        _ninja_on_path()
        paths = [source_folder() / source for source in sources]
        digest = hashlib.sha256()
        for path in paths:
            digest.update(path.read_bytes())
        digest.update(f"{torch.__version__}|{_machine_fingerprint()}".encode())
        build = cache_folder() / f"{name}-{digest.hexdigest()[:16]}"
        build.mkdir(parents=True, exist_ok=True)
        flags = ["-O3", "-fopenmp", "-march=native", "-ffp-contract=fast"]
        if not (build / f"{name}.so").is_file():
            log.info("building the %s extension (once per machine; about a minute)", name)
        return cpp_extension.load(name=name, sources=[str(p) for p in paths], build_directory=str(build),
                                  extra_cflags=flags, extra_ldflags=["-fopenmp"],
                                  extra_cuda_cflags=["-O3"] if cuda else None, with_cuda=cuda, verbose=False)
    except Exception as error:  # any failure means: use the reference, and say why once
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        first = next((line for line in lines if "error:" in line), lines[0] if lines else type(error).__name__)
        log.warning("the %s extension cannot be built (%s); using the PyTorch reference", name, first)
        return None
