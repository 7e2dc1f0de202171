"""`clipsonic preprocess`: a folder of videos -> a training set (the format of `clipsonic.data`).

Per clip (paper §3.1): the 16 kHz mono soundtrack's log-mel over the whole clip, and CLIP image
embeddings of N frames spread evenly over it (N = duration x `frames_per_second`, at least
`min_frames`; frame i at (i + 1/2) / N of the clip) with their timestamps, plus its label and
split. Label texts are encoded once ("a photo of [label]": CLIP's text embedding and per-token
encodings, what the prior reads) into labels.npz.

Decoding (ffmpeg, the mel, the resize to CLIP's input) runs in `workers` processes while this
process batches frames through CLIP. A video that cannot be used (no audio or video stream,
shorter than `min_seconds`, unreadable or corrupt) is listed in skipped.csv with the reason and
the run goes on. Clips reach the dataset a shard at a time through atomic writes, so a run
killed at any point resumes by skipping what is listed (clips.jsonl and skipped.csv). A run holds
the dataset's lock throughout (`DatasetWriter`): a second run into the same folder stops at once.
The decoding processes end with this one, however it ends.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from clipsonic.audio import MelConfig, mel_spectrogram
from clipsonic.config import Config
from clipsonic.data import TEXT_TEMPLATE, DatasetWriter, read_records
from clipsonic.errors import ClipsonicError, Interrupted, MediaError
from clipsonic.fileio import atomic_path
from clipsonic.labels import LabelTable, assign_split

log = logging.getLogger(__name__)
SKIPPED_NAME = "skipped.csv"


@dataclasses.dataclass(frozen=True)
class PreprocessConfig(Config):
    frames_per_second: float = 1.0
    min_frames: int = 3
    min_seconds: float = 2.05  # the paper drops clips shorter than its 2.05-s training window
    keep_frames: bool = False  # also store the CLIP-sized frames (for image-query evaluation)
    split_ratio: float = 0.9  # the train share, for clips whose split no labels file gives
    split_seed: int = 0
    encode_batch: int = 32  # frames per CLIP forward pass
    shard_clips: int = 256

    def __post_init__(self) -> None:
        if self.frames_per_second <= 0 or self.min_frames < 1 or self.min_seconds < 0:
            raise ClipsonicError("frames per second must be positive, the minimum frame count at least 1 and the "
                                 "minimum duration non-negative")
        if not 0 < self.split_ratio <= 1:
            raise ClipsonicError(f"split ratio {self.split_ratio} must be in (0, 1]")
        if self.encode_batch < 1 or self.shard_clips < 1:
            raise ClipsonicError("the CLIP batch and the clips per shard must be at least 1")


@dataclasses.dataclass(frozen=True)
class ClipJob:
    """What a decoding worker needs for one video."""

    path: Path
    source: str  # path relative to the video folder, POSIX separators: also the clip's id
    mel: MelConfig
    resolution: int
    settings: PreprocessConfig


@dataclasses.dataclass(frozen=True)
class DecodedClip:
    source: str
    duration: float
    mel: np.ndarray  # [n_mels, frames] float32
    frames: np.ndarray  # [N, resolution, resolution, 3] uint8, cropped as CLIP's preprocessing does
    frame_times: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Skip:
    source: str
    reason: str


@dataclasses.dataclass
class Summary:
    videos: int = 0
    added: int = 0
    already_done: int = 0
    skipped: int = 0  # this run
    skipped_before: int = 0
    seconds: float = 0.0

    @property
    def clips_per_second(self) -> float:
        return (self.added + self.skipped) / self.seconds if self.seconds > 0 else 0.0


def frame_times(duration: float, settings: PreprocessConfig) -> tuple[float, ...]:
    """Timestamps (seconds) of the frames to embed: evenly spread, each in the middle of its share."""
    count = max(settings.min_frames, round(duration * settings.frames_per_second))
    return tuple((index + 0.5) * duration / count for index in range(count))


def decode_clip(job: ClipJob) -> DecodedClip | Skip:
    """Audio, log-mel and frames of one video, or the reason it cannot be used."""
    from clipsonic import media
    from clipsonic.imageproc import resize_center_crop

    try:
        info = media.probe(job.path)
        if not info.has_audio:
            return Skip(job.source, "no audio stream")
        if not info.has_video:
            return Skip(job.source, "no video stream")
        if info.duration and info.duration < job.settings.min_seconds:
            return Skip(job.source, f"shorter than {job.settings.min_seconds:g} s ({info.duration:.2f} s)")
        wav = media.decode_audio(job.path, job.mel.sample_rate)
        duration = wav.size / job.mel.sample_rate
        if duration < job.settings.min_seconds:
            return Skip(job.source, f"shorter than {job.settings.min_seconds:g} s ({duration:.2f} s of audio)")
        times = frame_times(duration, job.settings)
        pictures = media.read_frames(job.path, times)
    except MediaError as error:
        reason = str(error).removeprefix(f"{job.path}: ")
        return Skip(job.source, reason)
    with torch.no_grad():
        mel = mel_spectrogram(torch.from_numpy(wav), job.mel).numpy()
    frames = np.stack([resize_center_crop(torch.from_numpy(picture), job.resolution).numpy() for picture in pictures])
    return DecodedClip(job.source, duration, mel, frames, times)


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with(parent: int) -> None:
    """End this process when `parent` dies, however it dies (kill -9 included).

    Otherwise a killed run leaves its decoding processes (~260 MB each) waiting for work forever, and
    with them multiprocessing's resource tracker, which only exits once no process holds its pipe.
    On Linux the kernel sends SIGKILL on the parent's death (PR_SET_PDEATHSIG). It does so when the
    *thread* that started this process ends: here the one that called `pool.submit`, which outlives
    the pool (only a pool with max_tasks_per_child starts workers from its manager thread). Elsewhere,
    and as a second line, a thread sees the parent go (getppid() changes to init or a subreaper).
    """
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.debug("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent:  # it died before the signal was asked for
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _quiet_worker(parent: int) -> None:
    # The main process handles Ctrl-C for the whole run; one torch thread per decoding process.
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def decoded(jobs: Iterable[ClipJob], workers: int) -> Iterator[DecodedClip | Skip]:
    """`decode_clip` of each job, in order; with `workers` > 0 in that many processes, a few jobs ahead."""
    if workers == 0:
        yield from map(decode_clip, jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: forking a process that has run torch's thread pools can deadlock.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_quiet_worker,
                               initargs=(os.getpid(),))
    pending = deque()
    try:
        for job in jobs:
            pending.append(pool.submit(decode_clip, job))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def encode_frames(clip, frames: np.ndarray, batch: int) -> np.ndarray:
    """CLIP image embeddings [N, D] (float32) of cropped uint8 frames [N, H, W, 3]."""
    from clipsonic.clip import normalize_pixels

    device, dtype = next(clip.parameters()).device, clip.dtype
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(frames), batch):
            pixels = normalize_pixels(torch.from_numpy(frames[start:start + batch])).to(device, dtype)
            outputs.append(clip.encode_image(pixels).float().cpu())
    return torch.cat(outputs).numpy()


def encode_labels(clip, labels: list[str], template: str = TEXT_TEMPLATE,
                  batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """For each label, CLIP's text embedding [L, D] and per-token encodings [L, 77, W] of the template's text."""
    from clipsonic.prior import text_condition
    from clipsonic.tokenizer import tokenize

    device = next(clip.parameters()).device
    embeddings, encodings = [], []
    with torch.inference_mode():
        for start in range(0, len(labels), batch):
            texts = [template.format(label=label) for label in labels[start:start + batch]]
            embedding, encoding = text_condition(clip, tokenize(texts, clip.config.context_length).to(device))
            embeddings.append(embedding.float().cpu())
            encodings.append(encoding.float().cpu())
    return torch.cat(embeddings).numpy(), torch.cat(encodings).numpy()


def read_skipped(path: Path) -> dict[str, str]:
    """source -> reason from a skipped.csv; an unreadable file counts as empty (it is rewritten)."""
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8", newline="") as handle:
        return {row["file"]: row["reason"] for row in csv.DictReader(handle) if row.get("file")}


def write_skipped(path: Path, skipped: dict[str, str]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["file", "reason"])
    writer.writerows(sorted(skipped.items()))
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text.getvalue(), encoding="utf-8")


def clip_description(clip, checkpoint: str | os.PathLike | None) -> dict:
    """What dataset.json records of the CLIP that made the embeddings (a resumed run must use the same)."""
    return {"checkpoint": None if checkpoint is None else Path(checkpoint).name, "config": clip.config.to_dict()}


class _Terminate:
    """SIGTERM behaves like Ctrl-C while the run is on, so a `kill` also saves the finished clips."""

    def __enter__(self):
        # Only the main thread may set handlers; elsewhere signals are left alone.
        in_main = threading.current_thread() is threading.main_thread()
        self._previous = signal.signal(signal.SIGTERM, self._raise) if in_main else None
        return self

    @staticmethod
    def _raise(number, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def preprocess(videos: str | os.PathLike, out: str | os.PathLike, clip, *, labels: LabelTable | None = None,
               settings: PreprocessConfig = PreprocessConfig(), mel: MelConfig = MelConfig(), workers: int = 0,
               clip_checkpoint: str | os.PathLike | None = None, retry_skipped: bool = False,
               progress: bool = False) -> Summary:
    """Add every not yet processed video below `videos` to the dataset folder `out`."""
    from clipsonic.media import VIDEO_SUFFIXES, find_files

    root, folder = Path(videos), Path(out)
    if not root.is_dir():
        raise ClipsonicError(f"{root}: not a folder")
    if workers < 0:
        raise ClipsonicError(f"--workers {workers}: must be 0 (decode in this process) or more")
    files = find_files(root, VIDEO_SUFFIXES)
    if not files:
        raise ClipsonicError(f"{root}: no video files ({', '.join(VIDEO_SUFFIXES)}) in it")
    description = clip_description(clip, clip_checkpoint)
    # The writer holds the folder's lock until the end: a second run into it stops here, untouched.
    with DatasetWriter(folder, mel, clip.config.embed_dim, description, settings.shard_clips,
                       source_root=root) as writer:
        recorded = writer.info.get("clip") or {}
        if recorded.get("config") != description["config"]:
            raise ClipsonicError(f"{folder}: was made with another CLIP ({recorded.get('checkpoint')}); "
                                 f"use a new output folder")
        return _fill(writer, files, root, clip, labels, settings, mel, workers, retry_skipped, progress)


def _fill(writer: DatasetWriter, files: list[Path], root: Path, clip, labels: LabelTable | None,
          settings: PreprocessConfig, mel: MelConfig, workers: int, retry_skipped: bool, progress: bool) -> Summary:
    """The body of `preprocess`, holding the dataset's lock."""
    folder = writer.folder
    skipped_path = folder / SKIPPED_NAME
    skipped = read_skipped(skipped_path)
    summary = Summary(videos=len(files))
    jobs = []
    for path in files:
        source = path.relative_to(root).as_posix()
        if source in writer.done:
            summary.already_done += 1
        elif source in skipped and not retry_skipped:
            summary.skipped_before += 1
        else:
            skipped.pop(source, None)
            jobs.append(ClipJob(path, source, mel, clip.config.image_resolution, settings))
    started = time.perf_counter()
    bar = None
    if progress and jobs:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="clip", desc="preprocess", dynamic_ncols=True)
    batch: list[DecodedClip] = []
    try:
        with _Terminate():
            for result in decoded(jobs, workers):
                if isinstance(result, Skip):
                    skipped[result.source] = result.reason
                    summary.skipped += 1
                    log.debug("skipped %s: %s", result.source, result.reason)
                else:
                    batch.append(result)
                    if sum(len(item.frames) for item in batch) >= settings.encode_batch:
                        summary.added += _add(writer, clip, batch, labels, settings, folder)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(skipped=summary.skipped, refresh=False)
            summary.added += _add(writer, clip, batch, labels, settings, folder)
    except KeyboardInterrupt:
        writer.flush()
        write_skipped(skipped_path, skipped)
        raise Interrupted(f"stopped; {summary.added} new clip(s) saved in {folder}; run the same command again "
                          f"to go on") from None
    finally:
        if bar is not None:
            bar.close()
    writer.flush()
    write_skipped(skipped_path, skipped)
    _write_label_encodings(writer, clip, folder)
    summary.seconds = time.perf_counter() - started
    return summary


def _add(writer: DatasetWriter, clip, batch: list[DecodedClip], labels: LabelTable | None,
         settings: PreprocessConfig, folder: Path) -> int:
    """Encode the batch's frames and queue its clips in the writer; empties `batch`."""
    if not batch:
        return 0
    embeddings = encode_frames(clip, np.concatenate([item.frames for item in batch]), settings.encode_batch)
    offset = 0
    for item in batch:
        entry = labels.lookup(item.source) if labels is not None else None
        split = entry.split if entry is not None and entry.split else \
            assign_split(item.source, settings.split_ratio, settings.split_seed)
        if settings.keep_frames:
            target = folder / "frames" / f"{item.source}.npy"
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, item.frames)
        writer.add(item.source, item.source, item.mel, embeddings[offset:offset + len(item.frames)], item.frame_times,
                   entry.label if entry is not None else None, split, item.duration)
        offset += len(item.frames)
    count = len(batch)
    batch.clear()
    return count


def _write_label_encodings(writer: DatasetWriter, clip, folder: Path) -> None:
    """labels.npz for every label in the dataset (rewritten when a run added new ones)."""
    labels = sorted({record.label for record in read_records(folder / "clips.jsonl") if record.label is not None})
    path = folder / "labels.npz"
    if not labels:
        return
    if path.is_file():
        with np.load(path) as archive:
            if sorted(archive["labels"].tolist()) == labels:
                return
    embeddings, encodings = encode_labels(clip, labels)
    writer.write_labels(labels, embeddings, encodings)
