"""Media decoding through the ffmpeg and ffprobe binaries (a system dependency, not a package).

Every failure becomes a `MediaError` naming the file: ffmpeg missing, file missing or
unreadable, no audio stream, a timestamp past the end (ffmpeg exits 0 with no output there),
and partial or corrupt files (ffmpeg may exit 0 after decode errors, so it runs with
``-xerror`` and anything it prints at the ``error`` level counts as a failure).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clipsonic.errors import MediaError

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".flv", ".mpg", ".mpeg", ".ts", ".3gp", ".ogv",
                  ".wmv")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".aac")
INSTALL_HINT = ("install it: Debian/Ubuntu 'apt-get install ffmpeg', macOS 'brew install ffmpeg', "
                "conda 'conda install -c conda-forge ffmpeg'")


@dataclasses.dataclass(frozen=True)
class MediaInfo:
    """What ffprobe says of a file. `duration` is in seconds (0.0 when unknown)."""

    path: Path
    duration: float
    has_audio: bool
    has_video: bool
    fps: float | None
    width: int | None
    height: int | None
    sample_rate: int | None
    channels: int | None


def find_binary(name: str = "ffmpeg") -> str:
    """Absolute path of `name` (ffmpeg or ffprobe) on PATH, or a MediaError saying how to get it."""
    found = shutil.which(name)
    if found is None:
        raise MediaError(f"{name} was not found on PATH; {INSTALL_HINT}")
    return found


def find_files(folder: str | os.PathLike, suffixes: Sequence[str]) -> list[Path]:
    """Files below `folder` (recursively, sorted) whose suffix is in `suffixes`; hidden files
    and folders (a leading dot, as temporary and partial downloads often have) are left out."""
    root = Path(folder)
    return sorted(path for path in root.rglob("*") if path.suffix.lower() in suffixes and path.is_file()
                  and not any(part.startswith(".") for part in path.relative_to(root).parts))


def _run(args: list[str], path: Path) -> bytes:
    """Run an ffmpeg-family command; stdout on success, a MediaError naming `path` otherwise."""
    try:
        done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    except OSError as error:
        raise MediaError(f"{path}: cannot run {args[0]} ({error.strerror})") from None
    message = done.stderr.decode("utf-8", errors="replace").strip()
    if done.returncode != 0 or message:
        reason = _last_reason(message, path) or f"{Path(args[0]).name} exit status {done.returncode}"
        raise MediaError(f"{path}: unreadable or corrupt media ({reason})")
    return done.stdout


def _last_reason(message: str, path: Path) -> str:
    """ffmpeg's last error line without its '[demuxer @ 0x...]' tag or a repeat of the path."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return ""
    reason = re.sub(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*", "", lines[-1])
    return reason.removeprefix(f"{path}: ").removeprefix(f"{path.name}: ")


def _existing(path: str | os.PathLike) -> Path:
    source = Path(path)
    if not source.exists():
        raise MediaError(f"{source}: no such file")
    if not source.is_file():
        raise MediaError(f"{source}: not a file")
    if not os.access(source, os.R_OK):
        raise MediaError(f"{source}: not readable (permission denied)")
    return source


def _rate(text: str | None) -> float | None:
    if not text or text in ("0/0", "0"):
        return None
    numerator, _, denominator = text.partition("/")
    value = float(numerator) / float(denominator or 1)
    return value if value > 0 else None


def probe(path: str | os.PathLike) -> MediaInfo:
    """Duration, streams, frame rate, picture size and audio format of a media file."""
    source = _existing(path)
    out = _run([find_binary("ffprobe"), "-v", "error", "-print_format", "json", "-show_format",
                "-show_streams", str(source)], source)
    report = json.loads(out or b"{}")
    streams = report.get("streams", [])
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    # Cover art is a video stream of a single picture; it is not a video.
    video = next((s for s in streams if s.get("codec_type") == "video"
                  and not s.get("disposition", {}).get("attached_pic")), None)
    if audio is None and video is None:
        raise MediaError(f"{source}: no audio or video stream")
    durations = [float(d) for d in [report.get("format", {}).get("duration")]
                 + [s.get("duration") for s in streams] if d not in (None, "N/A")]
    return MediaInfo(
        path=source,
        duration=max(durations, default=0.0),
        has_audio=audio is not None,
        has_video=video is not None,
        fps=_rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate")) if video else None,
        width=int(video["width"]) if video and "width" in video else None,
        height=int(video["height"]) if video and "height" in video else None,
        sample_rate=int(audio["sample_rate"]) if audio and "sample_rate" in audio else None,
        channels=int(audio["channels"]) if audio and "channels" in audio else None,
    )


def decode_audio_native(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """The first audio stream as mono float32 [T] at its own rate, and that rate."""
    info = probe(path)
    if not info.has_audio or not info.sample_rate or not info.channels:
        raise MediaError(f"{info.path}: has no audio stream")
    raw = _run([find_binary("ffmpeg"), "-nostdin", "-v", "error", "-xerror", "-i", str(info.path),
                "-map", "0:a:0", "-vn", "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"], info.path)
    samples = np.frombuffer(raw, dtype="<f4")
    usable = samples.size - samples.size % info.channels
    if usable == 0:
        raise MediaError(f"{info.path}: the audio stream decodes to no samples")
    frames = samples[:usable].reshape(-1, info.channels)  # interleaved [T, C]
    return frames.mean(axis=1, dtype=np.float32), info.sample_rate


def decode_audio(path: str | os.PathLike, sr: int = 16000) -> np.ndarray:
    """The first audio stream as mono float32 [T] at `sr` Hz (channels averaged, band-limited resampling)."""
    import torch

    from clipsonic.resample import resample

    wav, native_sr = decode_audio_native(path)
    return resample(torch.from_numpy(wav.copy()), native_sr, sr).numpy()


def _read_ppm(data: bytes, path: Path, start: int = 0) -> tuple[np.ndarray, int]:
    """One binary PPM (P6, 8-bit) at `start` -> (uint8 [H, W, 3], the offset after it).

    ffmpeg writes each header as 'P6\\nW H\\n255\\n'; several pictures may follow each other.
    """
    fields, position = [], start
    while len(fields) < 4:
        while position < len(data) and data[position:position + 1].isspace():
            position += 1
        end = position
        while end < len(data) and not data[end:end + 1].isspace():
            end += 1
        if end == position:
            raise MediaError(f"{path}: ffmpeg returned a truncated picture")
        fields.append(data[position:end])
        position = end
    magic, width, height, depth = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    if magic != b"P6" or depth != 255:
        raise MediaError(f"{path}: unexpected picture format from ffmpeg ({magic!r}, depth {depth})")
    begin, size = position + 1, width * height * 3
    pixels = data[begin:begin + size]
    if len(pixels) != size:
        raise MediaError(f"{path}: ffmpeg returned a truncated picture")
    return np.frombuffer(pixels, dtype=np.uint8).reshape(height, width, 3).copy(), begin + size


def _read_ppms(data: bytes, path: Path) -> list[np.ndarray]:
    pictures, position = [], 0
    while position < len(data):
        picture, position = _read_ppm(data, path, position)
        pictures.append(picture)
    return pictures


_PICTURE_OUTPUT = ["-f", "image2pipe", "-vcodec", "ppm", "-pix_fmt", "rgb24", "pipe:1"]


def _grab_frame(path: Path, seconds: float | None) -> bytes:
    seek = [] if seconds is None else ["-ss", f"{seconds:.6f}"]
    return _run([find_binary("ffmpeg"), "-nostdin", "-v", "error", "-xerror", *seek, "-i", str(path),
                 "-map", "0:v:0", "-frames:v", "1", *_PICTURE_OUTPUT], path)


def _grab_frames_in_one_pass(path: Path, times: Sequence[float]) -> list[np.ndarray]:
    """For each of the increasing `times`, the first frame shown at or after it, from one decoding pass.

    Far cheaper than one seeking ffmpeg per frame. Two times within one frame interval select a
    single frame, so the caller compares counts and falls back to seeking.
    """
    # A frame is taken when it is the first at or after some time: t >= T and the previous frame's t < T.
    chosen = "+".join(f"gte(t,{seconds:.6f})*not(gte(prev_pts*TB,{seconds:.6f}))" for seconds in times)
    data = _run([find_binary("ffmpeg"), "-nostdin", "-v", "error", "-xerror", "-i", str(path), "-map", "0:v:0",
                 "-vf", f"select='{chosen}'", "-fps_mode", "passthrough", *_PICTURE_OUTPUT], path)
    return _read_ppms(data, path)


def read_frames(path: str | os.PathLike, timestamps: Sequence[float]) -> np.ndarray:
    """RGB frames uint8 [N, H, W, 3] at `timestamps` (seconds), as displayed (rotation applied).

    Each is the first frame shown at or after its timestamp.
    """
    info = probe(path)
    if not info.has_video:
        raise MediaError(f"{info.path}: has no video stream")
    if not timestamps:
        return np.zeros((0, info.height or 0, info.width or 0, 3), dtype=np.uint8)
    for seconds in timestamps:
        if seconds < 0:
            raise MediaError(f"{info.path}: timestamp {seconds:.3f}s is negative")
    distinct = sorted(set(float(seconds) for seconds in timestamps))
    pictures = _grab_frames_in_one_pass(info.path, distinct)
    if len(pictures) != len(distinct):
        pictures = [_seek_frame(info, seconds) for seconds in distinct]
    by_time = dict(zip(distinct, pictures))
    return np.stack([by_time[float(seconds)] for seconds in timestamps])


def _seek_frame(info: MediaInfo, seconds: float) -> np.ndarray:
    data = _grab_frame(info.path, seconds)
    if not data:
        raise MediaError(f"{info.path}: timestamp {seconds:.3f}s is past the end of the video "
                         f"({info.duration:.3f}s long)")
    return _read_ppm(data, info.path)[0]


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A still image (PNG, JPEG, WebP, ... anything ffmpeg reads) as RGB uint8 [H, W, 3]."""
    source = _existing(path)
    data = _grab_frame(source, None)
    if not data:
        raise MediaError(f"{source}: holds no picture")
    return _read_ppm(data, source)[0]
