"""Run-wide settings chosen by the user: device, dtype, seed and CPU threads.

The dtype policy is explicit: float32 unless asked otherwise, never changed silently with
the device. Norm layers keep float32 inside the models whatever is chosen here.
"""

from __future__ import annotations

import random
import re

from clipsonic.errors import ClipsonicError

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def resolve_device(name: str = "auto"):
    """A torch.device for ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda[:N]`` or ``mps``."""
    import torch

    if not DEVICE_PATTERN.match(name):
        raise ClipsonicError(f"--device {name}: expected auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ClipsonicError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ClipsonicError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ClipsonicError(f"--device {name}: MPS is not available on this machine")
    return device


def resolve_dtype(name: str = "fp32"):
    import torch

    if name not in DTYPES:
        raise ClipsonicError(f"--dtype {name}: expected one of {', '.join(DTYPES)}")
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
        raise ClipsonicError(f"--threads {count}: must be at least 1")
    torch.set_num_threads(count)
