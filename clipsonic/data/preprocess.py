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

Before anything is written the inputs are checked (`scan_folder`, `match_labels`,
`check_output_folder`): audio-only files and broken links go to skipped.csv, a labels file that
names none of the videos stops the run, and a run that adds nothing to a folder it created removes
it. Under torchrun the ranks share the videos and rank 0 merges their part datasets at the end
(`_rank_zero`, `_other_rank`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import shutil
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
from clipsonic.data import TEXT_TEMPLATE, DatasetWriter, clip_id
from clipsonic.errors import ClipsonicError, Interrupted, MediaError, ParameterError
from clipsonic.fileio import atomic_path
from clipsonic.data.labels import LabelTable, assign_split

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
    source: str  # path relative to the video folder, POSIX separators
    id: str  # the clip's id in the dataset (`clip_id`: the source, for the dataset's first folder)
    root: int  # which of the dataset's video folders `source` is in
    mel: MelConfig
    resolution: int
    settings: PreprocessConfig


@dataclasses.dataclass(frozen=True)
class DecodedClip:
    source: str
    id: str
    root: int
    duration: float
    mel: np.ndarray  # [n_mels, frames] float32
    frames: np.ndarray  # [N, resolution, resolution, 3] uint8, cropped as CLIP's preprocessing does
    frame_times: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Skip:
    id: str
    reason: str


@dataclasses.dataclass
class Summary:
    videos: int = 0
    added: int = 0
    already_done: int = 0
    skipped: int = 0  # this run
    skipped_before: int = 0
    unusable: int = 0  # audio-only files and broken links (listed in skipped.csv)
    ignored: int = 0  # other files below the folder (not media)
    relabelled: int = 0  # clips already in the dataset whose label or split the labels file changed
    labels: "LabelMatch | None" = None
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
            return Skip(job.id, "no audio stream")
        if not info.has_video:
            return Skip(job.id, "no video stream")
        if info.duration and info.duration < job.settings.min_seconds:
            return Skip(job.id, f"shorter than {job.settings.min_seconds:g} s ({info.duration:.2f} s)")
        wav = media.decode_audio(job.path, job.mel.sample_rate)
        duration = wav.size / job.mel.sample_rate
        if duration < job.settings.min_seconds:
            return Skip(job.id, f"shorter than {job.settings.min_seconds:g} s ({duration:.2f} s of audio)")
        times = frame_times(duration, job.settings)
        pictures = media.read_frames(job.path, times)
    except MediaError as error:
        reason = str(error).removeprefix(f"{job.path}: ")
        return Skip(job.id, reason)
    with torch.no_grad():
        mel = mel_spectrogram(torch.from_numpy(wav), job.mel).numpy()
    frames = np.stack([resize_center_crop(torch.from_numpy(picture), job.resolution).numpy() for picture in pictures])
    return DecodedClip(job.source, job.id, job.root, duration, mel, frames, times)


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


@dataclasses.dataclass(frozen=True)
class FolderScan:
    """What is below a video folder: the videos to use, and the files that cannot be used."""

    videos: tuple[Path, ...]
    unusable: dict[str, str]  # relative path -> why (audio-only file, broken link): listed in skipped.csv
    ignored: tuple[str, ...]  # relative paths of other files (not media: labels, notes, pictures)


def scan_folder(root: Path) -> FolderScan:
    """Sort every file below `root` into videos, unusable media and ignored files.

    Hidden files and folders (a leading dot: partial downloads, editor files) are not looked at."""
    from clipsonic.media import AUDIO_SUFFIXES, VIDEO_SUFFIXES

    videos, unusable, ignored = [], {}, []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or path.is_dir():
            continue
        name, suffix = relative.as_posix(), path.suffix.lower()
        if path.is_symlink() and not path.exists():
            unusable[name] = f"broken symbolic link (to {os.readlink(path)})"
        elif suffix in VIDEO_SUFFIXES:
            videos.append(path)
        elif suffix in AUDIO_SUFFIXES:
            unusable[name] = "audio-only file: no pictures to embed (train-vocoder can use it)"
        else:
            ignored.append(name)
    return FolderScan(tuple(videos), unusable, tuple(ignored))


@dataclasses.dataclass(frozen=True)
class LabelMatch:
    """How many of a run's videos a labels file names."""

    file: Path
    videos: int
    unmatched: tuple[str, ...]  # relative paths of the videos it does not name

    @property
    def matched(self) -> int:
        return self.videos - len(self.unmatched)

    def describe(self, shown: int = 5) -> str:
        text = f"{self.file} names {self.matched} of the {self.videos} videos"
        if self.unmatched:
            more = len(self.unmatched) - shown
            text += f"; not named: {', '.join(self.unmatched[:shown])}" + (f" and {more} more" if more > 0 else "")
        return text


def match_labels(labels: LabelTable, sources: list[str]) -> LabelMatch:
    return LabelMatch(labels.source, len(sources), tuple(s for s in sources if labels.lookup(s) is None))


def _file_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun launch (one process, when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @classmethod
    def from_environment(cls) -> "Ranks":
        env = os.environ
        world = int(env.get("WORLD_SIZE", "1"))
        return cls(int(env.get("RANK", "0")), world, int(env.get("LOCAL_RANK", "0")),
                   int(env.get("LOCAL_WORLD_SIZE", str(world))))


RANKS_FOLDER = ".ranks"  # in the dataset folder: each rank's part dataset while a multi-rank run is on
_OUR_NAMES = {"dataset.json", "clips.jsonl", "shards", "labels.npz", "frames", SKIPPED_NAME}


def check_output_folder(folder: Path) -> None:
    """Refuse an output folder that is a file, cannot be created, or holds something other than a dataset."""
    if folder.exists() and not folder.is_dir():
        raise ClipsonicError(f"{folder}: exists and is not a folder")
    if folder.is_dir():
        foreign = sorted(entry.name for entry in folder.iterdir()
                         if entry.name not in _OUR_NAMES and not entry.name.startswith("."))
        if foreign and not (folder / "dataset.json").is_file():
            raise ClipsonicError(f"{folder}: holds other files ({', '.join(foreign[:3])}) and no clipsonic dataset; "
                                 f"use a new or empty folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ClipsonicError(f"{folder}: not writable")
        return
    ancestor = folder.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ClipsonicError(f"{folder}: cannot be created ({ancestor} is not a folder)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ClipsonicError(f"{folder}: cannot be created ({ancestor} is not writable)")


def preprocess(videos: str | os.PathLike, out: str | os.PathLike, clip, *, labels: LabelTable | None = None,
               settings: PreprocessConfig = PreprocessConfig(), mel: MelConfig = MelConfig(), workers: int = 0,
               clip_checkpoint: str | os.PathLike | None = None, retry_skipped: bool = False,
               progress: bool = False, allow_unlabelled: bool = False, add_source: bool = False,
               ranks: Ranks = Ranks()) -> Summary:
    """Add every not yet processed video below `videos` to the dataset folder `out`.

    With `labels`, clips already in the dataset get the file's label and split where it names
    them (only the label texts are encoded again). A labels file that names none of the videos
    is an error unless `allow_unlabelled`. Videos of a folder other than the dataset's need
    `add_source`. Under torchrun (`ranks.world` > 1) every rank calls this alike: the videos are
    dealt out, each rank fills its own part dataset, and rank 0 merges them at the end.
    """
    root, folder = Path(videos), Path(out)
    if not root.is_dir():
        raise ClipsonicError(f"{root}: not a folder")
    if workers < 0:
        raise ParameterError("{option}: must be 0 (decode in this process) or more", "workers", workers)
    scan = scan_folder(root)
    if not scan.videos:
        from clipsonic.media import VIDEO_SUFFIXES

        found = f"; {len(scan.unusable)} audio-only file(s) or broken link(s)" if scan.unusable else ""
        raise ClipsonicError(f"{root}: no video files ({', '.join(VIDEO_SUFFIXES)}) in it{found}")
    check_output_folder(folder)
    match = None
    if labels is not None:
        match = match_labels(labels, [path.relative_to(root).as_posix() for path in scan.videos])
        if match.matched == 0 and not allow_unlabelled:
            raise ParameterError(f"{match.describe()}: its entries must be the videos' paths below {root}, their "
                                 f"names or names without extension (VGGSound: youtube id and start); {{option}} "
                                 f"goes on without labels", "allow_unlabelled")
        if match.unmatched and ranks.rank == 0:
            log.warning("%s", match.describe())
    description = clip_description(clip, clip_checkpoint)
    run = _Run(root, scan, clip, labels, match, settings, mel, workers, retry_skipped, progress, ranks)
    created = not folder.exists()
    # The writer holds the folder's lock until the end: a second run into it stops here, untouched.
    # (Under torchrun only rank 0 holds it; the other ranks write part datasets of their own.)
    if ranks.world > 1 and ranks.rank != 0:
        return _other_rank(run, folder, description)
    try:
        writer = DatasetWriter(folder, mel, clip.config.embed_dim, description, settings.shard_clips,
                               source_root=root, add_source=add_source)
    except OSError as error:
        raise ClipsonicError(f"{folder}: cannot be written ({error.strerror})") from None
    try:
        with writer:
            recorded = writer.info.get("clip") or {}
            if recorded.get("config") != description["config"]:
                raise ClipsonicError(f"{folder}: was made with another CLIP ({recorded.get('checkpoint')}); "
                                     f"use a new output folder")
            return _rank_zero(run, writer) if ranks.world > 1 else run.single(writer)
    except BaseException:
        if created and not (folder / "clips.jsonl").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a run that made its folder and added nothing leaves none
        raise


@dataclasses.dataclass
class _Run:
    """One `preprocess` call's inputs, and the steps every rank shares."""

    root: Path
    scan: FolderScan
    clip: object
    labels: LabelTable | None
    match: LabelMatch | None
    settings: PreprocessConfig
    mel: MelConfig
    workers: int
    retry_skipped: bool
    progress: bool
    ranks: Ranks

    def plan(self, writer: DatasetWriter, skipped: dict[str, str], summary: Summary) -> list[ClipJob]:
        """The videos still to do (counting the rest in `summary`); `skipped` gains the unusable files."""
        jobs = []
        for path in self.scan.videos:
            source = path.relative_to(self.root).as_posix()
            identity = clip_id(writer.root_index, source)
            if identity in writer.done:
                summary.already_done += 1
            elif identity in skipped and not self.retry_skipped:
                summary.skipped_before += 1
            else:
                skipped.pop(identity, None)
                jobs.append(ClipJob(path, source, identity, writer.root_index, self.mel,
                                    self.clip.config.image_resolution, self.settings))
        for source, reason in self.scan.unusable.items():
            skipped[clip_id(writer.root_index, source)] = reason
        return jobs

    def relabel(self, writer: DatasetWriter) -> int:
        """Give the clips already in the dataset the labels file's label and split, where it names them."""
        if self.labels is None:
            return 0
        changes = {}
        for record in writer.records():
            entry = self.labels.lookup(record.source) if record.root == writer.root_index else None
            if entry is not None and (entry.label, entry.split or record.split) != (record.label, record.split):
                changes[record.id] = (entry.label, entry.split or record.split)
        count = writer.relabel(changes)
        if count:
            log.info("%d clip(s) already in the dataset got the labels file's label or split", count)
        return count

    def single(self, writer: DatasetWriter) -> Summary:
        """The whole run in this process, holding the dataset's lock."""
        skipped_path = writer.folder / SKIPPED_NAME
        skipped = read_skipped(skipped_path)
        summary = Summary(videos=len(self.scan.videos), unusable=len(self.scan.unusable),
                          ignored=len(self.scan.ignored), labels=self.match)
        summary.relabelled = self.relabel(writer)
        jobs = self.plan(writer, skipped, summary)
        started = time.perf_counter()
        try:
            summary.added, summary.skipped = self.work(writer, jobs, skipped, self.progress)
        finally:
            write_skipped(skipped_path, skipped)
        self.finish(writer, summary)
        summary.seconds = time.perf_counter() - started
        return summary

    def work(self, writer: DatasetWriter, jobs: list[ClipJob], skipped: dict[str, str],
             progress: bool) -> tuple[int, int]:
        """Decode, encode and add `jobs` to `writer`; (clips added, videos skipped). Ctrl-C and SIGTERM
        save what is done and raise `Interrupted`."""
        added = newly_skipped = 0
        bar = None
        if progress and jobs:
            from tqdm import tqdm

            bar = tqdm(total=len(jobs), unit="clip", desc="preprocess", dynamic_ncols=True)
        batch: list[DecodedClip] = []
        try:
            with _Terminate():
                for result in decoded(jobs, self.workers):
                    if isinstance(result, Skip):
                        skipped[result.id] = result.reason
                        newly_skipped += 1
                        log.debug("skipped %s: %s", result.id, result.reason)
                    else:
                        batch.append(result)
                        if sum(len(item.frames) for item in batch) >= self.settings.encode_batch:
                            added += _add(writer, self.clip, batch, self.labels, self.settings)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(skipped=newly_skipped, refresh=False)
                added += _add(writer, self.clip, batch, self.labels, self.settings)
        except KeyboardInterrupt:
            writer.flush()
            raise Interrupted(f"stopped; {added} new clip(s) saved in {writer.folder}; run the same command again "
                              f"to go on") from None
        finally:
            if bar is not None:
                bar.close()
        writer.flush()
        return added, newly_skipped

    def finish(self, writer: DatasetWriter, summary: Summary) -> None:
        """Encode the label texts, and say in dataset.json what this run did with which labels file."""
        _write_label_encodings(writer, self.clip)
        labels = None if self.labels is None else Path(self.labels.source).resolve()
        writer.record_run({"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "videos": str(self.root.resolve()),
                           "labels": None if labels is None else str(labels),
                           "labels_sha256": None if labels is None else _file_sha256(labels),
                           "labelled": None if self.match is None else self.match.matched,
                           "added": summary.added, "relabelled": summary.relabelled, "skipped": summary.skipped,
                           "ranks": self.ranks.world})


# --- torchrun: every rank fills a part dataset, rank 0 merges them -----------------------------------------------

def _part_folder(folder: Path, rank: int) -> Path:
    return folder / RANKS_FOLDER / f"rank-{rank:05d}"


def _join_process_group() -> None:
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        # gloo whatever the device: only small Python objects travel (the plan, each rank's result).
        # A rank waits for the slowest at the end, hence the long timeout.
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()  # an orderly goodbye: a rank that just exits can take gloo down with it


def _broadcast(value=None):
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather(value) -> list:
    import torch.distributed as dist

    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


@dataclasses.dataclass(frozen=True)
class _RankResult:
    rank: int
    added: int = 0
    skipped: int = 0
    error: str | None = None


def _rank_share(run: _Run, folder: Path, plan: dict, description: dict) -> _RankResult:
    """This rank's part of the plan, written to its own part dataset; failures are reported, not raised."""
    mine = plan["jobs"][run.ranks.rank::run.ranks.world]
    part = _part_folder(folder, run.ranks.rank)
    try:
        with DatasetWriter(part, run.mel, run.clip.config.embed_dim, description, run.settings.shard_clips,
                           source_root=run.root) as writer:
            writer.root_index = plan["root_index"]  # ids and records as the merged dataset has them
            skipped: dict[str, str] = {}
            try:
                added, count = run.work(writer, mine, skipped, run.progress and run.ranks.rank == 0)
            finally:
                write_skipped(part / SKIPPED_NAME, skipped)
        return _RankResult(run.ranks.rank, added, count)
    except (Exception, KeyboardInterrupt) as error:
        message = str(error) if isinstance(error, ClipsonicError) else f"{type(error).__name__}: {error}"
        return _RankResult(run.ranks.rank, error=message)


def _parts(folder: Path) -> list[Path]:
    holder = folder / RANKS_FOLDER
    return sorted(path for path in holder.iterdir() if (path / "dataset.json").is_file()) if holder.is_dir() else []


def _merge_parts(writer: DatasetWriter, skipped: dict[str, str], order: dict[str, int] | None = None) -> int:
    """Absorb every part dataset in the folder (this run's, or a killed run's) and remove them."""
    parts = _parts(writer.folder)
    if not parts:
        return 0
    rank = (lambda record: order.get(record.id, len(order))) if order else None
    added = writer.absorb(parts, order=rank)
    for part in parts:
        skipped.update(read_skipped(part / SKIPPED_NAME))
    write_skipped(writer.folder / SKIPPED_NAME, skipped)
    shutil.rmtree(writer.folder / RANKS_FOLDER, ignore_errors=True)
    return added


def _rank_zero(run: _Run, writer: DatasetWriter) -> Summary:
    """Rank 0: hold the dataset, merge what a killed run left, deal out the videos, work, merge.

    The other ranks hear from rank 0 twice, whatever happens: the plan (or why there is none), then
    how the merge ended, so no rank waits for a message that never comes."""
    _join_process_group()
    try:
        skipped_path = writer.folder / SKIPPED_NAME
        summary = Summary(videos=len(run.scan.videos), unusable=len(run.scan.unusable),
                          ignored=len(run.scan.ignored), labels=run.match)
        started = time.perf_counter()
        try:
            skipped = read_skipped(skipped_path)
            order = {clip_id(writer.root_index, path.relative_to(run.root).as_posix()): index
                     for index, path in enumerate(run.scan.videos)}  # merged clips are listed as one process would
            if leftover := _merge_parts(writer, skipped, order):
                log.info("merged %d clip(s) an interrupted multi-rank run had finished", leftover)
            summary.relabelled = run.relabel(writer)
            jobs = run.plan(writer, skipped, summary)
            write_skipped(skipped_path, skipped)
        except BaseException as error:
            _broadcast({"error": str(error)})
            raise
        plan = {"jobs": jobs, "root_index": writer.root_index}
        _broadcast(plan)
        results = _gather(_rank_share(run, writer.folder, plan, writer.info.get("clip")))
        try:
            failed = [result for result in results if result.error]
            if failed:
                raise ClipsonicError(f"rank {failed[0].rank}: {failed[0].error}" +
                                     (f" (and {len(failed) - 1} more rank(s) failed)" if len(failed) > 1 else "") +
                                     "; what the ranks finished is kept: run the same command again to go on")
            summary.added = _merge_parts(writer, skipped, order)
            summary.skipped = sum(result.skipped for result in results)
            run.finish(writer, summary)
        except BaseException as error:
            _broadcast(str(error))
            raise
        _broadcast(None)
    finally:
        _leave_process_group()
    summary.seconds = time.perf_counter() - started
    return summary


def _other_rank(run: _Run, folder: Path, description: dict) -> Summary:
    """A rank above 0: wait for rank 0's plan, do this rank's share of it, report to rank 0."""
    _join_process_group()
    plan = _broadcast()
    if "error" in plan:
        _leave_process_group()
        raise ClipsonicError(f"rank 0 stopped: {plan['error']}")
    result = _rank_share(run, folder, plan, description)
    _gather(result)
    merge_error = _broadcast()
    _leave_process_group()
    if result.error:
        raise ClipsonicError(result.error)
    if merge_error:
        raise ClipsonicError(f"rank 0 stopped: {merge_error}")
    return Summary(videos=len(run.scan.videos), added=result.added, skipped=result.skipped)


def _add(writer: DatasetWriter, clip, batch: list[DecodedClip], labels: LabelTable | None,
         settings: PreprocessConfig) -> int:
    """Encode the batch's frames and queue its clips in the writer; empties `batch`."""
    if not batch:
        return 0
    embeddings = encode_frames(clip, np.concatenate([item.frames for item in batch]), settings.encode_batch)
    offset = 0
    for item in batch:
        entry = labels.lookup(item.source) if labels is not None else None
        split = entry.split if entry is not None and entry.split else \
            assign_split(item.id, settings.split_ratio, settings.split_seed)
        if settings.keep_frames:
            target = writer.folder / "frames" / f"{item.id}.npy"
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, item.frames)
        writer.add(item.id, item.source, item.mel, embeddings[offset:offset + len(item.frames)], item.frame_times,
                   entry.label if entry is not None else None, split, item.duration, root=item.root)
        offset += len(item.frames)
    count = len(batch)
    batch.clear()
    return count


def _write_label_encodings(writer: DatasetWriter, clip) -> None:
    """labels.npz for every label in the dataset (rewritten when the set of labels changed)."""
    labels = sorted({record.label for record in writer.records() if record.label is not None})
    path = writer.folder / "labels.npz"
    if not labels:
        return
    if path.is_file():
        with np.load(path) as archive:
            if sorted(archive["labels"].tolist()) == labels:
                return
    embeddings, encodings = encode_labels(clip, labels)
    writer.write_labels(labels, embeddings, encodings)
