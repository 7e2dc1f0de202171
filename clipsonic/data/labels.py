"""Label files for `preprocess`: which label (and split) each video has.

Three formats, told apart by their content:

- a CSV with a header ``file,label[,split]``: `file` is the video's path relative to the video
  folder (or just its name, or its name without extension);
- VGGSound's ``vggsound.csv``: header-less rows ``youtube_id,start_seconds,label,split``, for
  videos named ``<youtube_id>_<start:06d>.<ext>`` (the dataset's naming) or ``<youtube_id>.<ext>``;
- MUSIC's JSON (``MUSIC_solo_videos.json`` / ``MUSIC21_solo_videos.json`` / the duets):
  ``{"videos": {"acoustic_guitar": ["<youtube_id>", ...], ...}}``, videos named ``<youtube_id>.<ext>``;
  underscores in the category become spaces ("acoustic guitar"), as the text prompt needs.

A split, where given, is ``train`` or ``test``; clips without one are split at random by
`assign_split`, from a hash of the clip id and the seed, so the choice does not depend on the
order of processing or on an earlier interrupted run.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
from pathlib import Path, PurePosixPath

from clipsonic.errors import ClipsonicError

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class LabelEntry:
    label: str
    split: str | None  # None: not given, see assign_split


class LabelTable:
    """Labels by key: a relative path, a file name, or a stem (with or without VGGSound's start suffix)."""

    def __init__(self, source: Path, entries: dict[str, LabelEntry], listed: int,
                 ambiguous: set[str] = frozenset()) -> None:
        self.source, self._entries, self._listed, self._ambiguous = source, entries, listed, set(ambiguous)

    def __len__(self) -> int:
        """How many videos the file lists."""
        return self._listed

    def labels(self) -> list[str]:
        return sorted({entry.label for entry in self._entries.values()})

    def lookup(self, relative: str) -> LabelEntry | None:
        """The entry for a video at `relative` (a POSIX path below the video folder), if listed."""
        path = PurePosixPath(relative)
        for key in (str(path), str(path.with_suffix("")), path.name, path.stem):
            if key in self._entries and key not in self._ambiguous:
                return self._entries[key]
        return None


def read_labels(path: str | os.PathLike) -> LabelTable:
    """Read a labels file in any of the module's formats; a one-line error names the file and line."""
    source = Path(path)
    if not source.is_file():
        raise ClipsonicError(f"{source}: no such labels file")
    try:
        text = source.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ClipsonicError(f"{source}: unreadable labels file ({error})") from None
    if source.suffix.lower() == ".json":
        return _read_music_json(source, text)
    rows = [row for row in csv.reader(text.splitlines()) if any(cell.strip() for cell in row)]
    if not rows:
        raise ClipsonicError(f"{source}: the labels file is empty")
    header = [cell.strip().lower() for cell in rows[0]]
    if "file" in header and "label" in header:
        return _read_file_label_csv(source, header, rows[1:])
    if len(rows[0]) == 4 and rows[0][1].strip().isdigit():
        return _read_vggsound_csv(source, rows)
    raise ClipsonicError(f"{source}: unrecognised labels format (expected a header 'file,label[,split]', "
                         f"VGGSound rows 'youtube_id,start_seconds,label,split' or MUSIC JSON)")


def _split(value: str, source: Path, line: int) -> str | None:
    split = value.strip().lower()
    if not split:
        return None
    if split not in SPLITS:
        raise ClipsonicError(f"{source}:{line}: split {value!r} must be train or test")
    return split


def _label(value: str, source: Path, line: int) -> str:
    label = " ".join(value.split())
    if not label:
        raise ClipsonicError(f"{source}:{line}: empty label" if line else f"{source}: empty label")
    return label


class _Builder:
    """Collects keys -> entries; a key listed twice with different entries is ambiguous."""

    def __init__(self, source: Path) -> None:
        self.source, self.entries, self.ambiguous, self.exact = source, {}, set(), set()

    def add(self, keys: list[str], entry: LabelEntry, line: int, exact: str) -> None:
        if exact in self.entries and self.entries[exact] != entry:
            where = f"{self.source}:{line}" if line else str(self.source)
            raise ClipsonicError(f"{where}: {exact} is listed twice with different labels or splits")
        self.exact.add(exact)
        for key in keys:
            if key in self.entries and self.entries[key] != entry:
                self.ambiguous.add(key)
            self.entries.setdefault(key, entry)

    def table(self) -> LabelTable:
        if not self.entries:
            raise ClipsonicError(f"{self.source}: the labels file lists no videos")
        return LabelTable(self.source, self.entries, len(self.exact), self.ambiguous)


def _read_file_label_csv(source: Path, header: list[str], rows: list[list[str]]) -> LabelTable:
    column = {name: header.index(name) for name in ("file", "label", "split") if name in header}
    builder = _Builder(source)
    for line, row in enumerate(rows, 2):
        if len(row) <= max(column["file"], column["label"]):
            raise ClipsonicError(f"{source}:{line}: expected {len(header)} columns, found {len(row)}")
        name = row[column["file"]].strip().replace("\\", "/")
        if not name:
            raise ClipsonicError(f"{source}:{line}: empty file name")
        split = _split(row[column["split"]], source, line) if "split" in column and column["split"] < len(row) else None
        entry = LabelEntry(_label(row[column["label"]], source, line), split)
        path = PurePosixPath(name)
        builder.add([str(path), str(path.with_suffix("")), path.name, path.stem], entry, line, str(path))
    return builder.table()


def _read_vggsound_csv(source: Path, rows: list[list[str]]) -> LabelTable:
    builder = _Builder(source)
    for line, row in enumerate(rows, 1):
        if len(row) != 4 or not row[1].strip().isdigit():
            raise ClipsonicError(f"{source}:{line}: expected 'youtube_id,start_seconds,label,split'")
        youtube_id, start = row[0].strip(), int(row[1])
        entry = LabelEntry(_label(row[2], source, line), _split(row[3], source, line))
        clip_name = f"{youtube_id}_{start:06d}"
        builder.add([clip_name, youtube_id], entry, line, clip_name)
    return builder.table()


def _read_music_json(source: Path, text: str) -> LabelTable:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ClipsonicError(f"{source}: not valid JSON ({error})") from None
    videos = data.get("videos") if isinstance(data, dict) else None
    if not isinstance(videos, dict):
        raise ClipsonicError(f"{source}: expected MUSIC's layout {{\"videos\": {{category: [youtube ids]}}}}")
    builder = _Builder(source)
    for category, ids in videos.items():
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ClipsonicError(f"{source}: category {category!r} must list YouTube ids as strings")
        entry = LabelEntry(_label(category.replace("_", " "), source, 0), None)
        for youtube_id in ids:
            builder.add([youtube_id], entry, 0, youtube_id)
    return builder.table()


def assign_split(clip_id: str, train_ratio: float, seed: int) -> str:
    """"train" with probability `train_ratio`, decided by a hash of (seed, clip id)."""
    digest = hashlib.sha256(f"{seed}\0{clip_id}".encode()).digest()
    uniform = int.from_bytes(digest[:8], "big") / 2**64
    return "train" if uniform < train_ratio else "test"
