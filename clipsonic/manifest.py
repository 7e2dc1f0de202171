"""The weights manifest (``weights/manifest.json``): which files exist, where they come from, their checksums.

Official checkpoints are downloaded by the user (nothing here downloads) into the user
weights folder, ``$CLIPSONIC_WEIGHTS`` or ``~/.cache/clipsonic/weights``, under the entry's
``file`` path. Files the project ships (the demo bundle) sit beside the manifest. Verification
is by sha256; where only a prefix is published (torch.hub file names) the prefix is checked,
and where nothing is published the computed checksum is reported for the user to pin.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from importlib import resources
from pathlib import Path

from clipsonic.errors import ClipsonicError

MANIFEST_VERSION = 1
USER_FOLDER_VARIABLE = "CLIPSONIC_WEIGHTS"


@dataclasses.dataclass(frozen=True)
class WeightEntry:
    name: str
    kind: str
    file: str
    source: str
    licence: str
    description: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    size: int | None = None
    shipped: bool = False


@dataclasses.dataclass(frozen=True)
class Verification:
    """Outcome of checking one entry: `status` is ok, mismatch, unpinned or missing."""

    entry: WeightEntry
    status: str
    path: Path | None
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == "mismatch"


def shipped_folder() -> Path:
    """The folder that holds the manifest and the shipped weights (inside the installed package)."""
    return Path(str(resources.files("clipsonic.weights")))


def user_folder() -> Path:
    configured = os.environ.get(USER_FOLDER_VARIABLE)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "clipsonic" / "weights"


def load_manifest(path: str | os.PathLike | None = None) -> dict[str, WeightEntry]:
    """Entries by name from `path` (default: the shipped manifest)."""
    source = Path(path) if path is not None else shipped_folder() / "manifest.json"
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ClipsonicError(f"{source}: cannot read the weights manifest ({error})") from None
    if data.get("version") != MANIFEST_VERSION or not isinstance(data.get("weights"), dict):
        raise ClipsonicError(f"{source}: not a version-{MANIFEST_VERSION} weights manifest")
    fields = {field.name for field in dataclasses.fields(WeightEntry)}
    entries = {}
    for name, record in data["weights"].items():
        unknown = sorted(set(record) - fields)
        if unknown:
            raise ClipsonicError(f"{source}: entry {name!r} has unknown field(s) {', '.join(unknown)}")
        try:
            entries[name] = WeightEntry(name=name, **record)
        except TypeError as error:
            raise ClipsonicError(f"{source}: entry {name!r} is incomplete ({error})") from None
    return entries


def locate(entry: WeightEntry, folders: list[Path] | None = None) -> Path | None:
    """Where the entry's file is: the shipped folder for shipped files, else the first of `folders`
    (default: the user weights folder) that holds it."""
    candidates = [shipped_folder()] if entry.shipped else (folders or [user_folder()])
    for folder in candidates:
        path = folder / entry.file
        if path.is_file():
            return path
    return None


def sha256_file(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def verify(entry: WeightEntry, folders: list[Path] | None = None) -> Verification:
    path = locate(entry, folders)
    if path is None:
        where = "the package" if entry.shipped else ", ".join(str(f) for f in folders or [user_folder()])
        return Verification(entry, "missing", None, f"{entry.file} not found in {where}; get it from {entry.source}")
    actual = sha256_file(path)
    if entry.sha256:
        if actual == entry.sha256:
            return Verification(entry, "ok", path, "sha256 matches")
        return Verification(entry, "mismatch", path, f"sha256 {actual} but the manifest expects {entry.sha256}")
    if entry.sha256_prefix:
        if actual.startswith(entry.sha256_prefix):
            return Verification(entry, "ok", path, f"sha256 {actual} matches the published prefix {entry.sha256_prefix}")
        return Verification(entry, "mismatch", path,
                            f"sha256 {actual} does not start with the published prefix {entry.sha256_prefix}")
    return Verification(entry, "unpinned", path, f"no published checksum; this copy's sha256 is {actual}")


def record_shipped(name: str, path: Path) -> WeightEntry:
    """Pin the sha256 and size of a shipped file (the demo bundle after a retrain) in the manifest."""
    from clipsonic.fileio import write_json_atomic

    source = shipped_folder() / "manifest.json"
    data = json.loads(source.read_text(encoding="utf-8"))
    record = data["weights"].get(name)
    if record is None or not record.get("shipped"):
        raise ClipsonicError(f"{source}: has no shipped entry {name!r}")
    record.update(sha256=sha256_file(path), size=path.stat().st_size)
    write_json_atomic(source, data)
    return load_manifest(source)[name]
