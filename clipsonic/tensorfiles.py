"""Read the tensors of foreign checkpoint formats without running any of their code.

- **TorchScript archives** (OpenAI's ``ViT-L-14.pt``): a zip whose ``data.pkl`` describes the
  module tree. It is unpickled with a restricted unpickler that admits only tensor rebuilding,
  storages, ordered dicts and TorchScript's list helpers; every ``__torch__.*`` class becomes
  an inert attribute holder. Nothing the archive names is imported or called.
- **safetensors** (Hugging Face): an 8-byte header length, a JSON header, raw little-endian data.

Both return a flat ``{dotted.name: tensor}`` dict, like a module's state dict.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from clipsonic.errors import CheckpointError

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_SAFETENSORS_DTYPES = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


class _ScriptObject:
    """Stands in for any ``__torch__.*`` class: keeps the attributes it is given, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("a TorchScript object with non-dict state")
        self.__dict__.update(state)


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *unused: Any) -> torch.Tensor:
    return torch.as_strided(storage, size, stride, offset)


def _identity(value: Any, *unused: Any) -> Any:
    return value


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, handle, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(handle)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return type(name, (_ScriptObject,), {})
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch.jit._pickle" and (name.startswith("build_") or name == "restore_type_tag"):
            return _identity
        raise pickle.UnpicklingError(f"refused to import {module}.{name}")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        kind, storage_type, key, _location, numel = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        data = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
        if not data:
            return torch.empty(0, dtype=storage_type.dtype)
        return torch.frombuffer(data, dtype=storage_type.dtype)[:numel]


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(name.count("/") == 1 and name.endswith("/data.pkl") for name in names) and \
        any("/code/" in name for name in names)


def _flatten(node: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    for name, value in vars(node).items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _flatten(value, f"{prefix}{name}.", out)


def read_torchscript(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor attribute of a TorchScript module archive, by dotted name."""
    source = Path(path)
    try:
        with zipfile.ZipFile(source) as archive:
            pickles = [name for name in archive.namelist() if name.count("/") == 1 and name.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise CheckpointError(f"{source}: not a TorchScript archive (no single data.pkl)")
            prefix = pickles[0][: -len("data.pkl")]
            with archive.open(pickles[0]) as handle:
                root = _RestrictedUnpickler(handle, archive, prefix).load()
    except (pickle.UnpicklingError, zipfile.BadZipFile, KeyError, ValueError) as error:
        raise CheckpointError(f"{source}: unreadable TorchScript archive ({error})") from None
    if not isinstance(root, _ScriptObject):
        raise CheckpointError(f"{source}: the TorchScript archive holds no module")
    tensors: dict[str, torch.Tensor] = {}
    _flatten(root, "", tensors)
    return tensors


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file."""
    source = Path(path)
    data = source.read_bytes()
    try:
        (header_length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + header_length])
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{source}: not a safetensors file ({error})") from None
    body = bytearray(data[8 + header_length:])
    tensors = {}
    for name, record in header.items():
        if name == "__metadata__":
            continue
        if record["dtype"] not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"{source}: tensor {name} has unsupported dtype {record['dtype']}")
        start, end = record["data_offsets"]
        dtype = _SAFETENSORS_DTYPES[record["dtype"]]
        flat = torch.frombuffer(body, dtype=dtype, offset=start, count=(end - start) // dtype.itemsize) \
            if end > start else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(record["shape"])
    return tensors
