"""The dataset folder that `preprocess` writes and every trainer and `eval` reads.

Layout (all arrays little-endian ``.npy``, float16 to halve the disk footprint)::

    dataset.json          {"format": "clipsonic.dataset", "version": 1, "mel": MelConfig,
                           "embed_dim": D, "clip": {...} | null, "text_template": "a photo of {label}",
                           "source_root": the folder the clips' `source` paths are relative to}
    clips.jsonl           one JSON record per clip (see `ClipRecord`)
    shards/mel-NNNNN.npy  [n_mels, frames]   the log-mels of a shard's clips, end to end in time
    shards/emb-NNNNN.npy  [images, D]        CLIP image embeddings of the clips' frames, in order
    labels.npz            labels [L] (str), text_embeddings [L, D], token_encodings [L, 77, W]:
                          CLIP encodings of text_template for each label (the prior's inputs)
    frames/<id>.npy       optional: the 224 x 224 frames themselves (uint8 [N, 224, 224, 3])

A shard's arrays are written (atomically) before its records are appended to clips.jsonl,
so a reader never sees a record whose data is incomplete, and an interrupted writer resumes
by skipping the ids already listed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from clipsonic.audio import MelConfig
from clipsonic.errors import ClipsonicError
from clipsonic.fileio import atomic_path, write_json_atomic

DATASET_FORMAT = "clipsonic.dataset"
DATASET_VERSION = 1
TEXT_TEMPLATE = "a photo of {label}"


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
        self.source_root = Path(self.info["source_root"]) if self.info.get("source_root") else None
        records = read_records(self.folder / "clips.jsonl")
        self.records = [r for r in records if split is None or r.split == split]
        self._shards: dict[tuple[str, int], np.ndarray] = {}
        self._labels: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def _shard(self, kind: str, index: int) -> np.ndarray:
        key = (kind, index)
        if key not in self._shards:
            self._shards[key] = np.load(self.folder / "shards" / f"{kind}-{index:05d}.npy", mmap_mode="r")
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
            raise ClipsonicError(f"{self.folder}: has no frames of {record.id} (preprocess with --keep-frames)")
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
    """Appends clips to a dataset folder in shards; safe to stop at any point and reopen."""

    def __init__(self, folder: str | os.PathLike, mel_config: MelConfig, embed_dim: int,
                 clip_info: dict | None = None, shard_clips: int = 256,
                 source_root: str | os.PathLike | None = None) -> None:
        self.folder = Path(folder)
        self.mel_config, self.embed_dim, self.shard_clips = mel_config, embed_dim, shard_clips
        (self.folder / "shards").mkdir(parents=True, exist_ok=True)
        info_path = self.folder / "dataset.json"
        info = {"format": DATASET_FORMAT, "version": DATASET_VERSION, "mel": mel_config.to_dict(),
                "embed_dim": embed_dim, "clip": clip_info, "text_template": TEXT_TEMPLATE,
                "source_root": None if source_root is None else str(Path(source_root).resolve())}
        if info_path.is_file():
            existing = Dataset(self.folder)
            if existing.mel_config != mel_config or existing.embed_dim != embed_dim:
                raise ClipsonicError(f"{self.folder}: holds a dataset with other mel settings or embedding size")
        else:
            write_json_atomic(info_path, info)
        drop_partial_last_line(self.folder / "clips.jsonl")
        self.done = {record.id for record in read_records(self.folder / "clips.jsonl")}
        self._next_shard = 1 + max((r.shard for r in read_records(self.folder / "clips.jsonl")), default=-1)
        self._pending: list[tuple[dict, np.ndarray, np.ndarray]] = []

    def add(self, clip_id: str, source: str, mel: np.ndarray, embeddings: np.ndarray,
            frame_times: Sequence[float], label: str | None, split: str, duration: float) -> None:
        """Queue one clip: mel [n_mels, frames], embeddings [N, D] for the N `frame_times`."""
        if mel.ndim != 2 or mel.shape[0] != self.mel_config.n_mels:
            raise ValueError(f"mel of {clip_id} must be [{self.mel_config.n_mels}, frames], got {mel.shape}")
        if embeddings.shape != (len(frame_times), self.embed_dim):
            raise ValueError(f"embeddings of {clip_id} must be [{len(frame_times)}, {self.embed_dim}]")
        meta = {"id": clip_id, "source": source, "label": label, "split": split, "duration": float(duration),
                "frame_times": tuple(float(t) for t in frame_times)}
        self._pending.append((meta, mel, embeddings))
        self.done.add(clip_id)
        if len(self._pending) >= self.shard_clips:
            self.flush()

    def flush(self) -> None:
        """Write the queued clips as one shard, then list them in clips.jsonl."""
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
            with atomic_path(self.folder / "shards" / f"{kind}-{shard:05d}.npy") as tmp:
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
