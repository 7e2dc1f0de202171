"""Our checkpoint files: ``{format, version, config, state_dict, extra}``, safe to load.

Files are written atomically (temporary file, fsync, rename) and read with
``torch.load(weights_only=True)``, which refuses a pickle that would import or call anything
but tensors and plain containers, without running it. Every error names the file and what is
wrong with it, and `load_state_dict_strict` names each missing, unexpected or mis-shaped key.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import warnings
from pathlib import Path
from typing import Any

import torch

from clipsonic.config import Config
from clipsonic.errors import CheckpointError
from clipsonic.fileio import atomic_path

FORMAT_PREFIX = "clipsonic."
_LISTED_KEYS = 8


def save_checkpoint(path: str | os.PathLike, kind: str, config: Config | dict[str, Any],
                    state_dict: dict[str, torch.Tensor], *, version: int = 1,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint of `kind` (e.g. ``"unet"``) atomically; returns the path.

    `extra` holds anything else the reader needs (optimizer state, step, RNG state, mel
    normalisation): only tensors, numbers, strings, lists and dicts, so it loads safely.
    """
    payload = {
        "format": FORMAT_PREFIX + kind,
        "version": int(version),
        "config": config.to_dict() if isinstance(config, Config) else dict(config),
        "state_dict": {name: tensor.detach().cpu() for name, tensor in state_dict.items()},
        "extra": extra or {},
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        # Through a file object the zip's inner folder is always "archive" (given a path, torch
        # names it after the temporary file), so the same weights give the same bytes and sha256.
        torch.save(payload, handle)
    return Path(path)


def safe_torch_load(path: str | os.PathLike) -> Any:
    """`torch.load` that runs no pickled code; errors name the file and the reason."""
    source = Path(path)
    if not source.is_file():
        raise CheckpointError(f"{source}: no such checkpoint file")
    try:
        with warnings.catch_warnings():
            # A foreign pickle protocol only draws a warning before the refusal we report.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        culprit = _code_in_pickle(source) if "Weights only load failed" in text else None
        if culprit is None and "GLOBAL" in text:
            culprit = next(line.strip() for line in text.splitlines() if "GLOBAL" in line)
        if culprit is not None:
            raise CheckpointError(f"{source}: refused to load: unpickling it would run code ({culprit})") from None
        detail = next((line.strip() for line in text.splitlines() if "Unsupported" in line), "")
        raise CheckpointError(f"{source}: not a PyTorch checkpoint ({detail or 'unreadable pickle data'})") from None
    except Exception as error:  # torch raises many types on garbage; all mean the same here
        raise CheckpointError(f"{source}: not a readable PyTorch checkpoint ({_first_line(str(error)) or type(error).__name__})") from None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX"}


def _code_in_pickle(source: Path) -> str | None:
    """For a bare pickle file: the first thing it would import or call, found by reading its
    opcodes (nothing is executed); None when it imports and calls nothing, or is not a pickle."""
    data = source.read_bytes()
    if not data.startswith(b"\x80"):
        return None
    strings: list[str] = []
    try:
        for opcode, argument, _position in pickletools.genops(data):
            if isinstance(argument, str):
                strings = (strings + [argument])[-2:]
            if opcode.name in _CODE_OPCODES:
                if opcode.name == "GLOBAL":
                    return f"imports {argument.replace(' ', '.')}"
                if opcode.name == "STACK_GLOBAL" and len(strings) == 2:
                    return f"imports {strings[0]}.{strings[1]}"
                return f"pickle opcode {opcode.name}"
    except (ValueError, pickle.UnpicklingError):
        return None
    return None


def load_checkpoint(path: str | os.PathLike, kind: str | None = None, *,
                    max_version: int | None = None) -> dict[str, Any]:
    """Read one of our checkpoints; check its `kind` and that its version is not newer than `max_version`."""
    return checked_payload(safe_torch_load(path), path, kind, max_version=max_version)


def is_ours(payload: Any) -> bool:
    """Whether a loaded file is one of our checkpoints (it has our format field)."""
    return isinstance(payload, dict) and str(payload.get("format", "")).startswith(FORMAT_PREFIX)


def checked_payload(payload: Any, path: str | os.PathLike, kind: str | None = None, *,
                    max_version: int | None = None) -> dict[str, Any]:
    """`load_checkpoint`'s checks on a file already loaded from `path` (for loaders that read
    several layouts and look at the file first)."""
    source = Path(path)
    if not is_ours(payload):
        raise CheckpointError(f"{source}: not a clipsonic checkpoint (no '{FORMAT_PREFIX}*' format field)")
    missing = [key for key in ("version", "config", "state_dict") if key not in payload]
    if missing:
        raise CheckpointError(f"{source}: damaged clipsonic checkpoint (no {', '.join(missing)})")
    found = payload["format"].removeprefix(FORMAT_PREFIX)
    if kind is not None and found != kind:
        raise CheckpointError(f"{source}: is a {found} checkpoint, expected a {kind} checkpoint")
    if max_version is not None and payload["version"] > max_version:
        raise CheckpointError(f"{source}: {found} checkpoint version {payload['version']} is newer than "
                              f"this clipsonic reads (up to {max_version}); upgrade clipsonic")
    payload.setdefault("extra", {})
    return payload


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LISTED_KEYS])
    return shown + (f" and {len(keys) - _LISTED_KEYS} more" if len(keys) > _LISTED_KEYS else "")


def load_state_dict_strict(module: torch.nn.Module, state_dict: dict[str, torch.Tensor],
                           source: str | os.PathLike) -> None:
    """Load every key, failing with a message naming missing, unexpected and mis-shaped keys."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [f"{name} {tuple(state_dict[name].shape)} vs model {tuple(tensor.shape)}"
                  for name, tensor in expected.items()
                  if name in state_dict and state_dict[name].shape != tensor.shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {_listed(mismatched)}")
    if problems:
        raise CheckpointError(f"{source}: does not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True)


def verify_reload(model, reloaded, written: str | os.PathLike, source: str | os.PathLike) -> None:
    """Every tensor of `reloaded` (the model read back from `written`) must equal `model`'s, dtype included."""
    theirs = reloaded.state_dict()
    for name, tensor in model.state_dict().items():
        copy = theirs.get(name)
        if copy is None or copy.dtype != tensor.dtype or not torch.equal(copy, tensor):
            raise CheckpointError(f"{written}: verification failed: {name} differs from {source}")
