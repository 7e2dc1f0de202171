"""Run-wide settings chosen by the user: device, dtype, seed and CPU threads.

The dtype policy is explicit: float32 unless asked otherwise, never changed silently with
the device. ``auto`` (the default of `sample`) is bfloat16 on a CPU that computes it natively
(AMX-BF16 or AVX512-BF16 on x86, BF16 on Arm), where it is 1.5-4x faster and the tests hold it
to fp32 within their tolerance, and float32 everywhere else (CUDA included: not yet measured
on a GPU); the caller says in one line what it picked. Norm layers keep float32 inside the
models whatever is chosen here.
"""

from __future__ import annotations

import random
import re

from clipsonic.errors import ParameterError

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
AUTO = "auto"
_NATIVE_BF16_FLAGS = {"amx_bf16", "avx512_bf16", "bf16"}  # x86 /proc/cpuinfo "flags", Arm "Features"
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def resolve_device(name: str = "auto"):
    """A torch.device for ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda[:N]`` or ``mps``."""
    import torch

    if not DEVICE_PATTERN.match(name):
        raise ParameterError("{option}: expected auto, cpu, cuda, cuda:N or mps", "device", name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError("{option}: CUDA is not available on this machine (use cpu)", "device", name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ParameterError(f"{{option}}: only {torch.cuda.device_count()} CUDA device(s) here", "device", name)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ParameterError("{option}: MPS is not available on this machine", "device", name)
    return device


def cpu_bf16_support() -> str | None:
    """The CPU feature that computes bfloat16 natively (e.g. ``avx512_bf16``), or None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    found = sorted(_NATIVE_BF16_FLAGS.intersection(line.split(":", 1)[1].split()))
                    return found[0] if found else None
    except OSError:
        pass  # not Linux: no way to tell here, so no bfloat16 by default
    return None


def auto_dtype(device) -> tuple[str, str]:
    """(dtype name, why) for ``--dtype auto`` on `device` (a torch.device)."""
    feature = cpu_bf16_support() if device.type == "cpu" else None
    if feature:
        return "bf16", f"this CPU computes bfloat16 natively ({feature})"
    return "fp32", "no native bfloat16 on this CPU" if device.type == "cpu" else f"the default on {device.type}"


def resolve_dtype(name: str = "fp32", device=None):
    """The torch dtype for a --dtype name; ``auto`` needs the `device` it will run on."""
    import torch

    if name == AUTO:
        if device is None:
            raise ValueError("dtype 'auto' needs the device")
        name = auto_dtype(device)[0]
    if name not in DTYPES:
        raise ParameterError(f"{{option}}: expected one of {AUTO}, {', '.join(DTYPES)}", "dtype", name)
    return getattr(torch, DTYPES[name])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for a reproducible run."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(count: int) -> None:
    import torch

    if count < 1:
        raise ParameterError("{option}: must be at least 1", "threads", count)
    torch.set_num_threads(count)
