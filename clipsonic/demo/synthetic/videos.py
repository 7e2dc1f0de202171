"""Clips and videos: which clips a data set has (`plan_clips`), their tracks, and the MP4 files.

Each video is written under a hidden temporary name and renamed when complete, so an
interrupted run never leaves a partial file under a final name; a re-run skips finished clips.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from clipsonic.demo.synthetic.pictures import SIZE, draw_backdrop, draw_moving, scene_params
from clipsonic.demo.synthetic.sounds import SAMPLE_RATE, synthesize_audio
from clipsonic.demo.synthetic.streams import AUDIO_STREAM, CLASSES, DURATION_STREAM, SCENE_STREAM, clip_rng
from clipsonic.errors import ClipsonicError
from clipsonic.fileio import atomic_path, write_json_atomic, write_text_atomic
from clipsonic.media import decode_audio, find_binary, run_tool

ENCODED_PEAK_LIMIT = 0.95  # the decoded sound track's peak must stay under this (under full scale)
FPS = 4  # `preprocess` samples about one frame a second; 4 fps still shows motion and encodes fast
SETTINGS_NAME = "demo_data.json"
SETTINGS_FORMAT = "clipsonic.demo-data"
SETTINGS_VERSION = 3  # bump whenever synthesis changes, so an old folder is not resumed with new clips


# ----------------------------------------------------------------------------------------------
# Clips and videos

@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """One clip to make: its class, number within the class, length, split and data seed."""

    label: str
    index: int
    seconds: float
    split: str
    seed: int

    @property
    def file(self) -> str:
        """Path relative to the videos folder, e.g. ``rain/rain_003.mp4``."""
        return f"{self.label}/{self.label}_{self.index:03d}.mp4"


REFERENCE_FIRST_INDEX = 100_000  # reference clips are numbered from here on, beyond every data set's clips


def _planned(label: str, index: int, seed: int, seconds_range: tuple[float, float], fps: int, split: str) -> ClipSpec:
    low, high = seconds_range
    frames = max(1, round(clip_rng(seed, label, index, DURATION_STREAM).uniform(low, high) * fps))
    return ClipSpec(label, index, frames / fps, split, seed)


def plan_clips(clips_per_class: int, seed: int = 0, seconds_range: tuple[float, float] = (4.0, 10.0),
               fps: int = FPS, test_fraction: float = 0.2) -> list[ClipSpec]:
    """Every clip of the data set, class by class. Lengths are whole frames; the last
    `test_fraction` of each class (at least one clip when there are two or more) is ``test``."""
    low, high = seconds_range
    if not 1 <= clips_per_class <= REFERENCE_FIRST_INDEX or not 0 < low <= high or fps < 1 \
            or not 0 <= test_fraction < 1:
        raise ClipsonicError(f"need 1 to {REFERENCE_FIRST_INDEX} clips per class, 0 < shortest <= longest seconds, "
                             f"fps >= 1 and a test fraction in [0, 1) "
                             f"(got {clips_per_class}, {seconds_range}, {fps}, {test_fraction})")
    tests = round(clips_per_class * test_fraction)
    if test_fraction > 0 and clips_per_class >= 2:
        tests = max(tests, 1)
    return [_planned(label, index, seed, seconds_range, fps, "test" if index >= clips_per_class - tests else "train")
            for label in CLASSES for index in range(clips_per_class)]


def reference_clips(count: int, seed: int = 0, seconds_range: tuple[float, float] = (4.0, 10.0),
                    fps: int = FPS) -> list[ClipSpec]:
    """`count` clips of each class that no data set `make_demo_data` writes contains (split
    ``reference``): real sounds of each class to measure generated ones against."""
    return [_planned(label, REFERENCE_FIRST_INDEX + index, seed, seconds_range, fps, "reference")
            for label in CLASSES for index in range(count)]


def clip_audio(spec: ClipSpec, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The clip's sound track, float32 [seconds * sample_rate]."""
    rng = clip_rng(spec.seed, spec.label, spec.index, AUDIO_STREAM)
    return synthesize_audio(spec.label, rng, spec.seconds, sample_rate)


def clip_frames(spec: ClipSpec, fps: int = FPS, size: int = SIZE) -> np.ndarray:
    """The clip's picture track, uint8 [round(seconds * fps), size, size, 3]."""
    params = scene_params(spec.label, clip_rng(spec.seed, spec.label, spec.index, SCENE_STREAM))
    backdrop = draw_backdrop(params, size)  # drawn once; each frame paints its moving parts on a copy
    return np.stack([draw_moving(params, backdrop, i / fps) for i in range(round(spec.seconds * fps))])


def _encode_command(ffmpeg: str, wav: Path, out: Path, fps: int, size: int, sample_rate: int) -> list[str]:
    # One thread and bit-exact flags: the same frames and samples give the same file bytes.
    # The audio and video tracks have the same length by construction, so no -shortest.
    return [ffmpeg, "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size}x{size}",
            "-r", str(fps), "-i", "pipe:0", "-i", str(wav), "-map", "0:v:0", "-map", "1:a:0",
            "-c:v", "libx264", "-preset", "fast", "-crf", "23", "-pix_fmt", "yuv420p", "-threads", "1",
            "-c:a", "aac", "-b:a", "48k", "-ar", str(sample_rate), "-ac", "1",
            "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1",
            "-f", "mp4", str(out)]


def _encode(frames: np.ndarray, audio: np.ndarray, out: Path, fps: int, sample_rate: int) -> None:
    """Write `frames` [N, S, S, 3] and `audio` [T] as one MP4 at `out` through ffmpeg."""
    import soundfile

    ffmpeg = find_binary("ffmpeg")
    with tempfile.TemporaryDirectory(prefix="clipsonic-demo-") as folder:
        wav = Path(folder) / "audio.wav"
        soundfile.write(str(wav), audio, sample_rate, subtype="FLOAT")
        command = _encode_command(ffmpeg, wav, out, fps, frames.shape[1], sample_rate)
        run_tool(command, out, stdin=np.ascontiguousarray(frames).tobytes(),  # rgb24 frames, one after another
                 failure="ffmpeg could not write the video", warnings_fail=False)


def write_clip(spec: ClipSpec, path: str | os.PathLike, fps: int = FPS, size: int = SIZE,
               sample_rate: int = SAMPLE_RATE) -> Path:
    """Synthesize `spec` and write it as an MP4 at `path`, atomically (never a partial file there)."""
    if size < 16 or size % 2:
        raise ClipsonicError(f"video size must be even and at least 16 pixels (H.264 4:2:0), got {size}")
    target = Path(path)
    frames, audio = clip_frames(spec, fps, size), clip_audio(spec, sample_rate)
    try:
        with atomic_path(target) as tmp:
            for _ in range(3):
                _encode(frames, audio, tmp, fps, sample_rate)
                peak = float(np.abs(decode_audio(tmp, sample_rate)).max())
                if peak <= ENCODED_PEAK_LIMIT:
                    break
                # The codec overshot: encode again, scaled so the decoded peak lands at 0.9.
                audio = audio * np.float32(0.9 / peak)
            else:
                raise ClipsonicError(f"{target}: the encoded sound track peaks at {peak:.2f}, over "
                                     f"{ENCODED_PEAK_LIMIT} after rescaling")
    except OSError as error:
        raise ClipsonicError(f"{target}: cannot write ({error.strerror or error})") from None
    return target


@dataclasses.dataclass(frozen=True)
class DemoData:
    """What `make_demo_data` did: where the videos and labels are, and how many clips it wrote or found."""

    videos: Path
    labels: Path
    clips: tuple[ClipSpec, ...]
    written: int
    skipped: int


def _check_settings(path: Path, settings: dict) -> None:
    """Refuse to resume a folder made with other content settings: its clips would not match."""
    if not path.exists():
        write_json_atomic(path, settings)
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        before = None
    if before != settings:
        raise ClipsonicError(f"{path.parent}: holds demo data made with other settings ({path.name}: {before}); "
                             f"use a new folder or the same seed, lengths, fps, size and sample rate")


def _remove_stale_temporaries(folder: Path) -> None:
    """Delete hidden temporary videos an interrupted (killed) run left behind."""
    for stale in folder.glob("*/.*.tmp.mp4"):
        stale.unlink(missing_ok=True)


def _labels_csv(specs: Sequence[ClipSpec]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("file", "label", "split"))
    writer.writerows((spec.file, spec.label, spec.split) for spec in specs)
    return text.getvalue()


def make_demo_data(out_dir: str | os.PathLike, clips_per_class: int = 12, seed: int = 0,
                   seconds_range: tuple[float, float] = (4.0, 10.0), fps: int = FPS, size: int = SIZE,
                   sample_rate: int = SAMPLE_RATE, test_fraction: float = 0.2, workers: int | None = None,
                   progress: bool = True) -> DemoData:
    """Write ``clips_per_class`` videos of each class under ``out_dir/videos`` and ``labels.csv``.

    Resumable: finished videos are kept (a video appears under its name only once complete).
    Clips are made `workers` at a time (threads: the work is NumPy and an ffmpeg child process).
    """
    specs = plan_clips(clips_per_class, seed, seconds_range, fps, test_fraction)
    if size < 16 or size % 2:
        raise ClipsonicError(f"video size must be even and at least 16 pixels (H.264 4:2:0), got {size}")
    find_binary("ffmpeg")  # fail before any work when it is missing
    root = Path(out_dir)
    videos = root / "videos"
    try:
        videos.mkdir(parents=True, exist_ok=True)
        _check_settings(root / SETTINGS_NAME, dict(format=SETTINGS_FORMAT, version=SETTINGS_VERSION, seed=int(seed),
                                                   seconds_range=[float(v) for v in seconds_range], fps=int(fps),
                                                   size=int(size), sample_rate=int(sample_rate)))
    except OSError as error:
        raise ClipsonicError(f"{root}: cannot write the demo data there ({error.strerror or error})") from None
    _remove_stale_temporaries(videos)
    todo = [spec for spec in specs if not (videos / spec.file).is_file()]
    workers = max(1, min(workers or min(4, os.cpu_count() or 1), len(todo) or 1))
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="clip", desc="demo data", dynamic_ncols=True)
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(write_clip, spec, videos / spec.file, fps, size, sample_rate) for spec in todo]
        try:
            for future in futures:
                future.result()
                if bar is not None:
                    bar.update()
        except BaseException:
            for future in futures:  # do not start more clips after a failure or Ctrl-C
                future.cancel()
            raise
        finally:
            if bar is not None:
                bar.close()
    try:
        write_text_atomic(root / "labels.csv", _labels_csv(specs))
    except OSError as error:
        raise ClipsonicError(f"{root}: cannot write labels.csv ({error.strerror or error})") from None
    return DemoData(videos, root / "labels.csv", tuple(specs), len(todo), len(specs) - len(todo))
