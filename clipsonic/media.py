"""Media decoding through the ffmpeg and ffprobe binaries (a system dependency, not a package).

Every failure becomes a `MediaError` naming the file: ffmpeg missing, file missing or
unreadable, no audio or video stream, a timestamp at or past the end of the video, and partial
or corrupt files (ffmpeg may exit 0 after decode errors, so it runs with ``-xerror`` and
anything it prints at the ``error`` level counts as a failure).
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


def run_tool(args: list[str], path: Path, *, stdin: bytes | None = None,
             failure: str = "unreadable or corrupt media", warnings_fail: bool = True) -> bytes:
    """Run an ffmpeg-family command (fed `stdin`, if given); its stdout on success, otherwise a
    MediaError naming `path`: "`path`: `failure` (ffmpeg's last error line)". With `warnings_fail`,
    anything on stderr counts as failure (the commands run with ``-v error``)."""
    try:
        done = subprocess.run(args, input=stdin, stdin=subprocess.DEVNULL if stdin is None else None,
                              capture_output=True, check=False)
    except OSError as error:
        raise MediaError(f"{path}: cannot run {args[0]} ({error.strerror})") from None
    message = done.stderr.decode("utf-8", errors="replace").strip()
    if done.returncode != 0 or (message and warnings_fail):
        reason = _last_reason(message, path) or f"{Path(args[0]).name} exit status {done.returncode}"
        raise MediaError(f"{path}: {failure} ({reason})")
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


def _probe_report(source: Path, *entries: str) -> dict:
    """ffprobe's JSON report of `source`: format and streams, plus any `-show_entries` sections."""
    extra = ["-show_entries", ":".join(entries)] if entries else []
    out = run_tool([find_binary("ffprobe"), "-v", "error", "-print_format", "json", "-show_format",
                "-show_streams", *extra, str(source)], source)
    return json.loads(out or b"{}")


def _video_stream(report: dict) -> dict | None:
    # Cover art is a video stream of a single picture; it is not a video.
    return next((s for s in report.get("streams", []) if s.get("codec_type") == "video"
                 and not s.get("disposition", {}).get("attached_pic")), None)


def _media_info(source: Path, report: dict) -> MediaInfo:
    streams = report.get("streams", [])
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    video = _video_stream(report)
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


def probe(path: str | os.PathLike) -> MediaInfo:
    """Duration, streams, frame rate, picture size and audio format of a media file."""
    source = _existing(path)
    return _media_info(source, _probe_report(source))


def decode_audio_native(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """The first audio stream as mono float32 [T] at its own rate, and that rate."""
    info = probe(path)
    if not info.has_audio or not info.sample_rate or not info.channels:
        raise MediaError(f"{info.path}: has no audio stream")
    raw = run_tool([find_binary("ffmpeg"), "-nostdin", "-v", "error", "-xerror", "-i", str(info.path),
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
# ffprobe prints durations to the microsecond: a time that close to the end is at the end.
_END_TOLERANCE = 1e-6
# How far a decoded frame's time may sit from its packet's time and still be that packet's frame:
# container time bases are at most a millisecond coarse, and the file's start offset is rounded to
# one tick of them. A quarter of the gap to the nearest frame keeps a shifted timeline from passing.
_MATCH_TOLERANCE = 1e-3


def _packet_starts(report: dict, stream: dict) -> np.ndarray | None:
    """Start times [F] (seconds from the file's start, increasing) of the frames `stream` decodes
    to, read off its packets without decoding; None where some packet has no presentation time.

    ffmpeg counts time from the file's start time, so that is subtracted. Packets an edit list
    hides (flag D) decode to no frame. Packets arrive in decoding order; frames leave the decoder
    in presentation order, hence the sort.
    """
    start = float(report.get("format", {}).get("start_time", 0.0) or 0.0)
    starts = []
    for packet in report.get("packets", []):
        if packet.get("stream_index") != stream["index"] or "D" in packet.get("flags", ""):
            continue
        if packet.get("pts_time") in (None, "N/A"):
            return None  # AVI, MPEG-PS: the decoder guesses these frames' times
        starts.append(float(packet["pts_time"]) - start)
    return np.sort(np.array(starts, dtype=np.float64))


def _decoded_starts(source: Path, stream: dict) -> np.ndarray:
    """Start times [F] (seconds from the file's start, in decoding order) of every frame ffmpeg
    decodes from `stream`, including the times it guesses; one full decode whose pictures are
    thrown away (framecrc lists each frame's pts in the time base its header names)."""
    out = run_tool([find_binary("ffmpeg"), "-nostdin", "-v", "error", "-xerror", "-i", str(source),
                "-map", f"0:{stream['index']}", "-fps_mode", "passthrough", "-c:v", "wrapped_avframe",
                "-f", "framecrc", "pipe:1"], source).decode("ascii", errors="replace")
    base = re.search(r"^#tb 0: (\d+)/(\d+)$", out, re.MULTILINE)
    if base is None:
        raise MediaError(f"{source}: ffmpeg listed no frame times")
    ticks = [int(line.split(",")[2]) for line in out.splitlines() if line and not line.startswith("#")]
    return np.array(ticks, dtype=np.float64) * int(base.group(1)) / int(base.group(2))


def _shown_frames(starts: np.ndarray, times: Sequence[float]) -> list[int]:
    """For each time, the index into `starts` [F] of the frame displayed then: the latest start at or
    before it (the later frame of equal starts; the earliest frame for a time before them all)."""
    order = np.argsort(starts, kind="stable")
    positions = np.searchsorted(starts[order], np.asarray(times, dtype=np.float64), side="right") - 1
    return [int(order[max(position, 0)]) for position in positions]


def _select_frames(source: Path, stream: dict, indices: Sequence[int],
                   starts: np.ndarray | None = None) -> list[np.ndarray]:
    """The frames numbered `indices` (in decoding order; increasing, distinct) of `stream` as RGB
    uint8 [H, W, 3] pictures, in one decoding pass that stops after the last of them.

    With `starts`, a frame is taken only if its decoded time also matches its start there: where
    the packets told a wrong story, fewer pictures come back and the caller knows.
    """
    if starts is None:
        chosen = "+".join(f"eq(n,{index})" for index in indices)
    else:
        gaps = np.diff(starts)
        terms = []
        for index in indices:
            nearest = min(gaps[max(index - 1, 0):index + 1], default=np.inf)  # to the frames either side
            tolerance = min(_MATCH_TOLERANCE, nearest / 4)
            terms.append(f"eq(n,{index})*lt(abs(t-{starts[index]:.6f}),{tolerance:.7f})")
        chosen = "+".join(terms)
    # Rotation filters go in before -vf, so `n` and `t` are the decoder's and pictures come out upright.
    # Each term matches one frame at most, so ffmpeg may stop decoding once it has len(indices).
    data = run_tool([find_binary("ffmpeg"), "-nostdin", "-v", "error", "-xerror", "-i", str(source),
                 "-map", f"0:{stream['index']}", "-vf", f"select='{chosen}'", "-fps_mode", "passthrough",
                 "-frames:v", str(len(indices)), *_PICTURE_OUTPUT], source)
    return _read_ppms(data, source)


def read_frames(path: str | os.PathLike, timestamps: Sequence[float]) -> np.ndarray:
    """RGB frames uint8 [N, H, W, 3] at `timestamps` [N] (seconds from the start, in any order), as
    displayed (rotation applied).

    Each is the frame displayed at that time: the last frame that starts at or before it (the
    first frame for a time before it starts), so two times within one frame's display get the same
    picture. The video lasts as long as the file (`probe(path).duration`); a time at or past that
    end, or a negative one, is a MediaError. Frames are chosen from the packets' presentation times
    (ffprobe reads them without decoding) and taken in one decoding pass that checks each one's
    time; files whose packets lack those times, or whose decoded frames disagree with them, take
    one more pass that decodes every frame's time first.
    """
    source = _existing(path)
    report = _probe_report(source, "packet=stream_index,pts_time,flags")
    info, stream = _media_info(source, report), _video_stream(report)
    if stream is None:
        raise MediaError(f"{source}: has no video stream")
    if len(timestamps) == 0:
        return np.zeros((0, info.height or 0, info.width or 0, 3), dtype=np.uint8)
    times = [float(seconds) for seconds in timestamps]
    for seconds in times:
        if seconds < 0:
            raise MediaError(f"{source}: timestamp {seconds:.3f}s is negative")
    starts = _packet_starts(report, stream)
    pictures = None
    if starts is not None and starts.size:
        pictures = _pictures_at(info, stream, starts, times, checked=True)
    if pictures is None:
        starts = _decoded_starts(source, stream)
        if not starts.size:
            raise MediaError(f"{source}: the video stream decodes to no frames")
        pictures = _pictures_at(info, stream, starts, times, checked=False)
    if pictures is None:
        raise MediaError(f"{source}: ffmpeg returned fewer frames than it listed")
    return pictures


def _pictures_at(info: MediaInfo, stream: dict, starts: np.ndarray, times: list[float],
                 checked: bool) -> np.ndarray | None:
    """read_frames on the frame start times `starts` [F]: pictures [N, H, W, 3], or None when the
    decoding pass returned fewer frames than chosen. `checked` matches each frame's decoded time."""
    # Unknown duration: the last frame lasts one frame interval (or ends where it starts).
    end = info.duration or float(starts.max()) + (1 / info.fps if info.fps else 0.0)
    for seconds in times:
        if seconds >= end - _END_TOLERANCE:
            raise MediaError(f"{info.path}: timestamp {seconds:.3f}s is at or past the end of the video "
                             f"({end:.3f}s long)")
    shown = _shown_frames(starts, times)
    distinct = sorted(set(shown))
    pictures = _select_frames(info.path, stream, distinct, starts if checked else None)
    if len(pictures) != len(distinct):
        return None
    by_index = dict(zip(distinct, pictures))
    return np.stack([by_index[index] for index in shown])


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A still image (PNG, JPEG, WebP, ... anything ffmpeg reads) as RGB uint8 [H, W, 3]."""
    source = _existing(path)
    data = run_tool([find_binary("ffmpeg"), "-nostdin", "-v", "error", "-xerror", "-i", str(source), "-map", "0:v:0",
                 "-frames:v", "1", *_PICTURE_OUTPUT], source)
    if not data:
        raise MediaError(f"{source}: holds no picture")
    return _read_ppm(data, source)[0]
