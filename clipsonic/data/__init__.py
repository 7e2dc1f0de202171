"""The dataset folder that `preprocess` writes and every trainer and `eval` reads.

Layout (all arrays little-endian ``.npy``, float16 to halve the disk footprint)::

    dataset.json          {"format": "clipsonic.dataset", "version": 2, "mel": MelConfig,
                           "embed_dim": D, "clip": {...} | null, "text_template": "a photo of {label}",
                           "sources": [the video folders the clips' `source` paths are relative to],
                           "source_root": sources[0] (what version 1 had), "runs": [one entry per run]}
    clips.jsonl           one JSON record per clip (see `ClipRecord`); `root` indexes `sources`
    shards/mel-NNNNN.npy  [n_mels, frames]   the log-mels of a shard's clips, end to end in time
    shards/emb-NNNNN.npy  [images, D]        CLIP image embeddings of the clips' frames, in order
    labels.npz            labels [L] (str), text_embeddings [L, D], token_encodings [L, 77, W]:
                          CLIP encodings of text_template for each label (the prior's inputs)
    frames/<id>.npy       optional: the 224 x 224 frames themselves (uint8 [N, 224, 224, 3])
    .lock                 flock'ed by the one writer (`DatasetWriter`) while it is open; holds its pid

One writer at a time: a second `DatasetWriter` on the folder fails at once, naming the process
that holds it; the lock dies with its holder, so a killed writer never blocks the next. A shard's
arrays are written (atomically, under a number no earlier shard file had) before its records are
appended to clips.jsonl, so a reader never sees a record whose data is incomplete, and an
interrupted writer resumes by skipping the ids already listed. `Dataset` checks at open that ids
are unique and that every record's ranges lie inside its shards and overlap no other record's.

A dataset can hold the videos of several folders (`DatasetWriter(add_source=True)`): a clip's id
is its path below its folder for the first, ``k:path`` for the k-th added one (k >= 1). Relabelling
rewrites clips.jsonl in one atomic replace, as does `DatasetWriter.absorb`, which merges the part
datasets of a multi-rank run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from clipsonic.audio import MelConfig
from clipsonic.errors import ClipsonicError, ParameterError
from clipsonic.fileio import LockHeld, atomic_path, exclusive_lock, temporary_files, write_json_atomic

log = logging.getLogger(__name__)
DATASET_FORMAT = "clipsonic.dataset"
DATASET_VERSION = 2  # 2: "sources" and the records' "root" (version 1 reads as one source)
TEXT_TEMPLATE = "a photo of {label}"
LOCK_NAME = ".lock"
_SHARD_NAME = re.compile(r"(mel|emb)-(\d+)\.npy")


def shard_path(folder: Path, kind: str, index: int) -> Path:
    """shards/mel-NNNNN.npy or shards/emb-NNNNN.npy of a dataset folder."""
    return folder / "shards" / f"{kind}-{index:05d}.npy"


@contextlib.contextmanager
def dataset_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Be the one writer of the dataset folder `folder` for the block (created if missing)."""
    try:
        with exclusive_lock(Path(folder) / LOCK_NAME):
            yield
    except LockHeld as held:
        raise ClipsonicError(f"{folder}: is being written by {held.holder}; wait for it to finish or use another "
                             f"output folder") from None


@dataclasses.dataclass(frozen=True)
class ClipRecord:
    """One clip: where its arrays are and what is known of it."""

    id: str
    source: str  # the video's path relative to the input folder
    label: str | None
    split: str  # "train" or "test"
    duration: float  # seconds of audio
    shard: int
    mel_offset: int  # first frame of this clip in the shard's mel array
    mel_frames: int
    frame_offset: int  # first row of this clip in the shard's embedding array
    frame_times: tuple[float, ...]  # seconds, one per embedded video frame
    root: int = 0  # which of the dataset's `sources` folders `source` is relative to

    @property
    def frame_count(self) -> int:
        return len(self.frame_times)

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "frame_times": list(self.frame_times)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> "ClipRecord":
        data = json.loads(line)
        data["frame_times"] = tuple(data["frame_times"])
        return cls(**data)


class Dataset:
    """Read access to a dataset folder; arrays are memory-mapped on first use."""

    def __init__(self, folder: str | os.PathLike, split: str | None = None) -> None:
        self.folder = Path(folder)
        info_path = self.folder / "dataset.json"
        try:
            self.info = json.loads(info_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ClipsonicError(f"{self.folder}: not a clipsonic dataset (no dataset.json)") from None
        except json.JSONDecodeError as error:
            raise ClipsonicError(f"{info_path}: unreadable ({error})") from None
        if self.info.get("format") != DATASET_FORMAT:
            raise ClipsonicError(f"{info_path}: not a clipsonic dataset description")
        if self.info.get("version", 0) > DATASET_VERSION:
            raise ClipsonicError(f"{self.folder}: dataset version {self.info['version']} is newer than this "
                                 f"clipsonic reads (up to {DATASET_VERSION})")
        self.mel_config = MelConfig.from_dict(self.info["mel"])
        self.embed_dim = int(self.info["embed_dim"])
        self.text_template = self.info.get("text_template", TEXT_TEMPLATE)
        self.sources = dataset_sources(self.info)
        records = read_records(self.folder / "clips.jsonl")
        self._verify(records)
        self.records = [r for r in records if split is None or r.split == split]
        self._shards: dict[tuple[str, int], np.ndarray] = {}
        self._labels: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def source_root(self) -> Path | None:
        """The first video folder (the only one, unless videos of others were added)."""
        return self.sources[0] if self.sources else None

    def source_path(self, record: ClipRecord) -> Path | None:
        """The video (or audio) file a clip was made from; None when the dataset does not say where."""
        if record.root >= len(self.sources):
            return None
        return self.sources[record.root] / record.source

    def _verify(self, records: list[ClipRecord]) -> None:
        """Fail on records that are listed twice, point outside their shards or share rows of one.

        A record's data can only be wrong this way when something other than one `DatasetWriter`
        wrote the folder (two at once before the lock, an edit by hand): reading on would return
        another clip's mel or a short one without an error. Only the shards' .npy headers are read.
        """
        damaged = "the dataset is damaged (preprocess its videos again into a new folder)"
        listed: set[str] = set()
        by_shard: dict[int, list[ClipRecord]] = defaultdict(list)
        for record in records:
            if record.id in listed:
                raise ClipsonicError(f"{self.folder}: clip {record.id!r} is listed twice in clips.jsonl; {damaged}")
            listed.add(record.id)
            by_shard[record.shard].append(record)
        # per kind: the axis records index, what its entries are, and the shape (None: any size)
        layout = (("mel", 1, "mel frames", (self.mel_config.n_mels, None)),
                  ("emb", 0, "embedding rows", (None, self.embed_dim)))
        for shard, members in sorted(by_shard.items()):
            for kind, axis, what, expected in layout:
                path = shard_path(self.folder, kind, shard)
                name = path.relative_to(self.folder).as_posix()
                try:
                    shape = _npy_shape(path)
                except (OSError, ValueError) as error:
                    raise ClipsonicError(f"{self.folder}: clip {members[0].id!r} is in {name}, which cannot be read "
                                         f"({error.strerror if isinstance(error, OSError) else error})") from None
                if len(shape) != 2 or any(size not in (None, actual) for size, actual in zip(expected, shape)):
                    wanted = " x ".join("*" if size is None else str(size) for size in expected)
                    raise ClipsonicError(f"{self.folder}: {name} has shape {' x '.join(map(str, shape))}, not "
                                         f"{wanted}; {damaged}")
                end, owner = 0, None  # the end of the ranges seen so far, and whose it is
                for record in sorted(members, key=lambda member: _span(member, kind)):
                    start, count = _span(record, kind)
                    claim = f"clip {record.id!r} claims {what} {start}:{start + count} of {name}"
                    if start < 0 or count < 0 or start + count > shape[axis]:
                        raise ClipsonicError(f"{self.folder}: {claim}, which has {shape[axis]}; {damaged}")
                    if count and start < end:
                        raise ClipsonicError(f"{self.folder}: {claim}, which clip {owner.id!r} also claims; {damaged}")
                    if count:
                        end, owner = start + count, record

    def _shard(self, kind: str, index: int) -> np.ndarray:
        key = (kind, index)
        if key not in self._shards:
            self._shards[key] = np.load(shard_path(self.folder, kind, index), mmap_mode="r")
        return self._shards[key]

    def mel(self, record: ClipRecord, start: int = 0, frames: int | None = None) -> np.ndarray:
        """Log-mel [n_mels, frames] (float32) of a clip, or of `frames` frames from `start`."""
        frames = record.mel_frames - start if frames is None else frames
        if start < 0 or start + frames > record.mel_frames:
            raise ValueError(f"mel window {start}+{frames} outside clip {record.id} ({record.mel_frames} frames)")
        begin = record.mel_offset + start
        return np.asarray(self._shard("mel", record.shard)[:, begin:begin + frames], dtype=np.float32)

    def image_embeddings(self, record: ClipRecord) -> np.ndarray:
        """CLIP image embeddings [frame_count, D] (float32) of the clip's frames."""
        rows = self._shard("emb", record.shard)[record.frame_offset:record.frame_offset + record.frame_count]
        return np.asarray(rows, dtype=np.float32)

    def frames(self, record: ClipRecord) -> np.ndarray:
        """The clip's embedded frames as CLIP saw them, uint8 [frame_count, 224, 224, 3] (``--keep-frames``)."""
        path = self.folder / "frames" / f"{record.id}.npy"
        if not path.is_file():
            raise ClipsonicError(f"{self.folder}: has no frames of {record.id} (preprocess it keeping the frames)")
        return np.load(path)

    def labels(self) -> dict[str, np.ndarray]:
        """``labels`` [L], ``text_embeddings`` [L, D] and ``token_encodings`` [L, 77, W] (float32)."""
        if self._labels is None:
            path = self.folder / "labels.npz"
            if not path.is_file():
                raise ClipsonicError(f"{self.folder}: has no labels.npz (no labelled clips were preprocessed)")
            with np.load(path) as archive:
                self._labels = {name: archive[name] for name in archive.files}
        return self._labels

    def text_embedding(self, label: str) -> np.ndarray:
        labels = self.labels()
        matches = np.flatnonzero(labels["labels"] == label)
        if matches.size == 0:
            raise ClipsonicError(f"{self.folder}: label {label!r} has no text embedding in labels.npz")
        return labels["text_embeddings"][matches[0]].astype(np.float32)


def dataset_sources(info: dict) -> list[Path]:
    """The video folders of a dataset.json (version 1 names one, as source_root, or none)."""
    if info.get("sources"):
        return [Path(folder) for folder in info["sources"]]
    return [Path(info["source_root"])] if info.get("source_root") else []


def clip_id(root: int, source: str) -> str:
    """The id of the clip made from `source` (a POSIX path below the dataset's `root`-th video folder)."""
    return source if root == 0 else f"{root}:{source}"


def _span(record: ClipRecord, kind: str) -> tuple[int, int]:
    """(first, count) of the record's columns in its mel shard or rows in its embedding shard."""
    return (record.mel_offset, record.mel_frames) if kind == "mel" else (record.frame_offset, record.frame_count)


def _npy_shape(path: Path) -> tuple[int, ...]:
    """The shape an .npy file's header gives (reading nothing else), once its size says the data is all there."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(handle)
        if handle.tell() + dtype.itemsize * int(np.prod(shape)) > os.fstat(handle.fileno()).st_size:
            raise ValueError(f"cut short: its header says {list(shape)} {dtype}")
    return shape


def read_records(path: Path) -> list[ClipRecord]:
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(ClipRecord.from_json(line))
            except (json.JSONDecodeError, TypeError, KeyError) as error:
                if not line.endswith("\n"):
                    break  # a record cut short by a crash while appending: ignore it
                raise ClipsonicError(f"{path}:{number}: damaged clip record ({error})") from None
    return records


class DatasetWriter:
    """Appends clips to a dataset folder in shards; safe to stop at any point and reopen.

    The writer holds the folder's lock from construction to `close()` (or the end of a `with`
    block, which also flushes): a second writer, in any process, raises a `ClipsonicError` naming
    this one's pid. `source_root` is the video folder the clips come from; an existing dataset of
    another folder takes it only with `add_source` (as a further source: `root_index`)."""

    def __init__(self, folder: str | os.PathLike, mel_config: MelConfig, embed_dim: int,
                 clip_info: dict | None = None, shard_clips: int = 256,
                 source_root: str | os.PathLike | None = None, add_source: bool = False) -> None:
        self.folder = Path(folder)
        self.mel_config, self.embed_dim, self.shard_clips = mel_config, embed_dim, shard_clips
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(dataset_lock(self.folder))  # before anything in the folder is read or written
        try:
            self._open(clip_info, source_root, add_source)
        except BaseException:
            self._lock.close()
            raise

    def _open(self, clip_info: dict | None, source_root: str | os.PathLike | None, add_source: bool) -> None:
        (self.folder / "shards").mkdir(parents=True, exist_ok=True)
        info_path = self.folder / "dataset.json"
        root = None if source_root is None else str(Path(source_root).resolve())
        info = {"format": DATASET_FORMAT, "version": DATASET_VERSION, "mel": self.mel_config.to_dict(),
                "embed_dim": self.embed_dim, "clip": clip_info, "text_template": TEXT_TEMPLATE,
                "sources": [] if root is None else [root], "source_root": root, "runs": []}
        if info_path.is_file():
            existing = Dataset(self.folder)
            if existing.mel_config != self.mel_config or existing.embed_dim != self.embed_dim:
                raise ClipsonicError(f"{self.folder}: holds a dataset with other mel settings or embedding size")
            self.info = {**existing.info, "version": DATASET_VERSION,
                         "sources": [str(folder) for folder in existing.sources]}
        else:
            write_json_atomic(info_path, info)
            self.info = info
        self.root_index = self._source_index(root, add_source)
        drop_partial_last_line(self.folder / "clips.jsonl")
        records = read_records(self.folder / "clips.jsonl")
        self.done = {record.id for record in records}
        files = self._shard_files()
        self._next_shard = 1 + max([r.shard for r in records] + list(files), default=-1)
        self._remove_leftovers(files, {record.shard for record in records})
        self._pending: list[tuple[dict, np.ndarray, np.ndarray]] = []

    def _source_index(self, root: str | None, add_source: bool) -> int:
        """Where `root` is in the dataset's sources, added (and dataset.json rewritten) if it is new."""
        sources = self.info["sources"]
        if root is None or root in sources:
            return 0 if root is None else sources.index(root)
        if sources and not add_source:
            raise ParameterError(f"{self.folder}: holds clips of {sources[0]}"
                                 + (f" (and {len(sources) - 1} more folder(s))" if len(sources) > 1 else "")
                                 + f", not of {root}; use another output folder, or {{option}} to add its videos",
                                 "add_source")
        sources.append(root)
        self._write_info()
        return len(sources) - 1

    def _write_info(self) -> None:
        self.info["source_root"] = self.info["sources"][0] if self.info["sources"] else None
        write_json_atomic(self.folder / "dataset.json", self.info)

    def record_run(self, entry: dict) -> None:
        """Add one entry (what a run did, with which labels file) to dataset.json's "runs"."""
        self.info.setdefault("runs", []).append(entry)
        self._write_info()

    def records(self) -> list[ClipRecord]:
        """The clips listed so far (queued ones not yet flushed are not)."""
        return read_records(self.folder / "clips.jsonl")

    def relabel(self, changes: dict[str, tuple[str | None, str]]) -> int:
        """Give listed clips a new (label, split): clips.jsonl rewritten in one atomic replace."""
        self.flush()
        records = self.records()
        updated = [dataclasses.replace(record, label=changes[record.id][0], split=changes[record.id][1])
                   if record.id in changes else record for record in records]
        count = sum(new != old for new, old in zip(updated, records))
        if count:
            write_records(self.folder / "clips.jsonl", updated)
        return count

    def absorb(self, parts: Sequence[str | os.PathLike], order: Callable[[ClipRecord], object] | None = None) -> int:
        """Merge the clips of the dataset folders `parts` (a multi-rank run's) that this one lacks.

        Shard files are hard-linked (or copied) under new numbers, frames moved, and clips.jsonl is
        replaced once, atomically: a merge killed before that leaves this dataset as it was (its
        new shard files are leftovers the next writer removes) and the parts intact, so it is
        simply done again. New records are listed in `order` (by default the parts' order)."""
        self.flush()
        records = self.records()
        added: list[ClipRecord] = []
        for part in map(Path, parts):
            dataset = Dataset(part)
            if dataset.mel_config != self.mel_config or dataset.embed_dim != self.embed_dim or \
                    (dataset.info.get("clip") or {}).get("config") != (self.info.get("clip") or {}).get("config"):
                raise ClipsonicError(f"{part}: was made with other settings than {self.folder}")
            fresh = [record for record in dataset.records if record.id not in self.done]
            for shard in sorted({record.shard for record in fresh}):
                for kind in ("mel", "emb"):
                    _link_or_copy(shard_path(part, kind, shard), shard_path(self.folder, kind, self._next_shard))
                added += [dataclasses.replace(record, shard=self._next_shard) for record in fresh
                          if record.shard == shard]
                self._next_shard += 1
            for record in fresh:
                frames = part / "frames" / f"{record.id}.npy"
                if frames.is_file():
                    target = self.folder / "frames" / f"{record.id}.npy"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(frames, target)
            self.done.update(record.id for record in fresh)
        if added:
            write_records(self.folder / "clips.jsonl", records + (sorted(added, key=order) if order else added))
        return len(added)

    def _shard_files(self) -> dict[int, list[Path]]:
        """shard number -> its files in shards/."""
        files: dict[int, list[Path]] = defaultdict(list)
        for path in (self.folder / "shards").iterdir():
            if match := _SHARD_NAME.fullmatch(path.name):
                files[int(match[2])].append(path)
        return files

    def _remove_leftovers(self, files: dict[int, list[Path]], listed: set[int]) -> None:
        """Delete what killed writers left: shard `files` whose records never got appended, temporary files.

        Holding the lock, nothing else is writing them, and no record points to them."""
        unlisted = [path for index, paths in files.items() if index not in listed for path in paths]
        for path in unlisted + temporary_files(self.folder) + temporary_files(self.folder / "shards"):
            log.debug("removing %s, left by an interrupted run", path)
            path.unlink(missing_ok=True)

    def close(self) -> None:
        """Release the folder's lock (queued clips not yet flushed are dropped)."""
        self._lock.close()

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:
                self.flush()
        finally:
            self.close()

    def add(self, clip_id: str, source: str, mel: np.ndarray, embeddings: np.ndarray,
            frame_times: Sequence[float], label: str | None, split: str, duration: float, root: int = 0) -> None:
        """Queue one clip: mel [n_mels, frames], embeddings [N, D] for the N `frame_times`; `source` is
        relative to the dataset's `root`-th video folder."""
        if mel.ndim != 2 or mel.shape[0] != self.mel_config.n_mels:
            raise ValueError(f"mel of {clip_id} must be [{self.mel_config.n_mels}, frames], got {mel.shape}")
        if embeddings.shape != (len(frame_times), self.embed_dim):
            raise ValueError(f"embeddings of {clip_id} must be [{len(frame_times)}, {self.embed_dim}]")
        meta = {"id": clip_id, "source": source, "label": label, "split": split, "duration": float(duration),
                "frame_times": tuple(float(t) for t in frame_times), "root": root}
        self._pending.append((meta, mel, embeddings))
        self.done.add(clip_id)
        if len(self._pending) >= self.shard_clips:
            self.flush()

    def flush(self) -> None:
        """Write the queued clips as one shard (a number no shard file had before), then list them in clips.jsonl."""
        if not self._pending:
            return
        shard = self._next_shard
        records, mel_offset, frame_offset = [], 0, 0
        for meta, mel, embeddings in self._pending:
            records.append(ClipRecord(shard=shard, mel_offset=mel_offset, mel_frames=mel.shape[1],
                                      frame_offset=frame_offset, **meta))
            mel_offset += mel.shape[1]
            frame_offset += embeddings.shape[0]
        mels = np.concatenate([mel for _, mel, _ in self._pending], axis=1).astype(np.float16)
        embeddings = np.concatenate([emb for _, _, emb in self._pending], axis=0).astype(np.float16)
        for kind, array in (("mel", mels), ("emb", embeddings)):
            with atomic_path(shard_path(self.folder, kind, shard)) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, array)
        append_lines(self.folder / "clips.jsonl", (record.to_json() for record in records))
        self._pending.clear()
        self._next_shard += 1

    def write_labels(self, labels: Sequence[str], text_embeddings: np.ndarray, token_encodings: np.ndarray) -> None:
        with atomic_path(self.folder / "labels.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, labels=np.array(list(labels)), text_embeddings=text_embeddings.astype(np.float32),
                         token_encodings=token_encodings.astype(np.float16))


def write_records(path: Path, records: Iterable[ClipRecord]) -> None:
    """Replace clips.jsonl with `records`, atomically (readers see the old list or the new one)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(record.to_json() + "\n" for record in records), encoding="utf-8")


def _link_or_copy(source: Path, target: Path) -> None:
    """`target` with `source`'s content, sharing its blocks where the file system can (no copy)."""
    try:
        os.link(source, target)
    except OSError:
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)


def append_lines(path: Path, lines: Iterable[str]) -> None:
    """Append whole lines and fsync, so a crash leaves at most one partial last line."""
    with open(path, "a", encoding="utf-8") as handle:
        for line in lines:
            handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def drop_partial_last_line(path: Path) -> None:
    """Cut a last line that a crash left without its newline, so appending starts on a fresh line."""
    if not path.is_file():
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)
