import itertools
import re
import shutil
import subprocess

import numpy as np
import pytest

from clipsonic import media
from clipsonic.errors import MediaError
from conftest import make_video


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    with_audio = make_video(folder / "with_audio.mp4", seconds=3.0, sample_rate=44100, channels=2)
    make_video(folder / "no_audio.mp4", seconds=3.0, audio=False)
    faststart = make_video(folder / "faststart.mp4", seconds=3.0, extra=["-movflags", "+faststart"])
    webm = make_video(folder / "clip.webm", seconds=2.0, fps=12, video_codec="libvpx", audio_codec="libopus",
                      sample_rate=48000)
    truncated_moov = folder / "truncated_moov.mp4"  # the index is at the end, which is cut off
    truncated_moov.write_bytes(with_audio.read_bytes()[:20000])
    truncated_data = folder / "truncated_data.mp4"  # the index is intact, the media data stops early
    truncated_data.write_bytes(faststart.read_bytes()[: faststart.stat().st_size * 3 // 4])
    truncated_webm = folder / "truncated.webm"
    truncated_webm.write_bytes(webm.read_bytes()[: webm.stat().st_size // 2])
    return {p.stem: p for p in folder.iterdir()}


def test_probe(videos):
    info = media.probe(videos["with_audio"])
    assert info.has_audio and info.has_video
    assert info.duration == pytest.approx(3.0, abs=0.05)
    assert info.fps == pytest.approx(25.0)
    assert (info.width, info.height, info.sample_rate, info.channels) == (64, 48, 44100, 2)
    silent = media.probe(videos["no_audio"])
    assert not silent.has_audio and silent.sample_rate is None
    assert media.probe(videos["clip"]).fps == pytest.approx(12.0)


def test_decode_audio_is_16k_mono_float32(videos):
    wav = media.decode_audio(videos["with_audio"])
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(wav.shape[0] - 48000) < 2048  # AAC encoder delay and padding
    spectrum = np.abs(np.fft.rfft(wav[4000:20000]))
    assert np.fft.rfftfreq(16000, 1 / 16000)[spectrum.argmax()] == pytest.approx(440, abs=2)
    webm = media.decode_audio(videos["clip"])
    assert abs(webm.shape[0] - 32000) < 1024


def test_no_audio_stream(videos):
    with pytest.raises(MediaError, match=r"no_audio\.mp4: has no audio stream"):
        media.decode_audio(videos["no_audio"])


# Frame choice: each timestamp gets the frame displayed then, the last one whose start time is at or
# before it. Every picture is checked against `_every_frame`, a full decode that does not go through
# read_frames, and each video's start times are fixed by how it was made.

VFR_STARTS = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 1.1, 1.2, 1.3, 1.4, 2.0, 3.0, 3.1, 3.5, 3.9)


def _ffmpeg(*args: str) -> None:
    subprocess.run([shutil.which("ffmpeg"), "-nostdin", "-v", "error", "-y", *args], check=True)


def _every_frame(path) -> tuple[np.ndarray, np.ndarray]:
    """Every frame ffmpeg decodes from `path`, in order: RGB uint8 [F, H, W, 3] (not rotated) and
    start times [F] in seconds from the start of the file, as showinfo reports what filters see."""
    info = media.probe(path)
    done = subprocess.run([shutil.which("ffmpeg"), "-nostdin", "-v", "info", "-noautorotate", "-i", str(path),
                           "-map", "0:v:0", "-vf", "showinfo", "-fps_mode", "passthrough", "-f", "rawvideo",
                           "-pix_fmt", "rgb24", "pipe:1"], capture_output=True, check=True)
    pictures = np.frombuffer(done.stdout, np.uint8).reshape(-1, info.height, info.width, 3)  # [F, H, W, 3]
    starts = np.array([float(t) for t in re.findall(r"\] n: *\d+ pts: *-?\d+ pts_time:(\S+)", done.stderr.decode())])
    assert len(starts) == len(pictures)
    return pictures, starts


def _times_to_check(duration: float) -> list[float]:
    """Timestamps over the whole clip: an even spread from 0 to 0.05 s before the end, the end minus
    1 ms, and preprocess's (i + 1/2) / N times for 1, 2 and 4 frames per second (N at least 3)."""
    counts = [max(3, round(duration * per_second)) for per_second in (1, 2, 4)]
    preprocess = [(index + 0.5) * duration / count for count in counts for index in range(count)]
    return [*np.linspace(0.0, duration - 0.05, 17).tolist(), duration - 0.001, *preprocess]


def _assert_displayed_frames(path, starts) -> None:
    """read_frames at `_times_to_check` returns, for each time, the decoded frame with the last
    start time <= it; `starts` are the frame start times the video was made with."""
    pictures, decoded_starts = _every_frame(path)
    np.testing.assert_allclose(decoded_starts, starts, atol=1e-6)
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(pictures))  # every frame is recognisable
    times = _times_to_check(media.probe(path).duration)
    frames = media.read_frames(path, times)
    assert frames.shape == (len(times), *pictures.shape[1:]) and frames.dtype == np.uint8
    for picture, seconds in zip(frames, times):
        shown = max(0, int(np.searchsorted(starts, seconds, side="right")) - 1)
        match = [index for index, candidate in enumerate(pictures) if np.array_equal(candidate, picture)]
        assert match == [shown], f"at {seconds:.3f}s: got frame {match}, expected {shown} (starts {starts[shown]:.3f}s)"


@pytest.mark.parametrize("fps", [1, 2, 4, 25])
def test_frame_displayed_at_each_time_at_constant_frame_rates(tmp_path, fps):
    path = make_video(tmp_path / f"{fps}fps.mp4", seconds=5.0, fps=fps, audio=False)
    _assert_displayed_frames(path, np.arange(5 * fps) / fps)


def test_frame_displayed_at_each_time_at_a_variable_frame_rate(tmp_path):
    # testsrc at 10 fps thinned to 15 frames 0.1-1.0 s apart; mp4 keeps the 4-s length.
    path = tmp_path / "vfr.mp4"
    keep = "+".join(f"eq(n,{round(start * 10)})" for start in VFR_STARTS)
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=4", "-vf", f"select='{keep}'",
            "-fps_mode", "vfr", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path))
    assert media.probe(path).duration == pytest.approx(4.0)
    _assert_displayed_frames(path, np.array(VFR_STARTS))


def test_low_frame_rate_by_hand(tmp_path):
    path = make_video(tmp_path / "1fps.mp4", seconds=5.0, fps=1, audio=False)
    pictures, _ = _every_frame(path)
    times = [4.55, 0.0, 0.2, 0.99, 1.0, 0.2, 4.95, 4.999]  # any order; a time twice, two in one frame
    frames = media.read_frames(path, times)
    for picture, shown in zip(frames, [4, 0, 0, 0, 1, 0, 4, 4]):
        np.testing.assert_array_equal(picture, pictures[shown])


@pytest.mark.parametrize("name", ["edit_list.mp4", "offset.ts", "no_pts.mpg", "b_frames.avi", "vp9.webm"])
def test_frame_displayed_at_each_time_in_other_containers(tmp_path, name):
    """Beyond H.264 in mp4: an mp4 cut without re-encoding (its edit list hides the frames before
    1.3 s, which are still decoded), MPEG-TS (the file starts at 1.4 s), MPEG-PS and AVI with
    B-frames (packets without presentation times), VP9 in WebM."""
    source = "testsrc=size=64x48:rate=25:duration=3"
    path = tmp_path / name
    if name == "edit_list.mp4":
        whole = make_video(tmp_path / "whole.mp4", seconds=4.0, audio=False)
        _ffmpeg("-ss", "1.3", "-i", str(whole), "-c", "copy", str(path))
    else:
        codec = {"offset.ts": ["-c:v", "libx264"], "no_pts.mpg": ["-c:v", "mpeg2video"],
                 "b_frames.avi": ["-c:v", "mpeg4", "-bf", "2"], "vp9.webm": ["-c:v", "libvpx-vp9"]}[name]
        _ffmpeg("-f", "lavfi", "-i", source, *codec, "-pix_fmt", "yuv420p", str(path))
    _, starts = _every_frame(path)
    np.testing.assert_allclose(starts, starts[0] + np.arange(len(starts)) / 25, atol=1e-6)  # AVI's starts at 0.04
    _assert_displayed_frames(path, starts)


def test_packet_times_spare_a_second_decode(tmp_path, monkeypatch):
    path = make_video(tmp_path / "25fps.mp4", seconds=2.0, audio=False)
    pictures, _ = _every_frame(path)

    def no_second_pass(*args):
        raise AssertionError("an mp4's packets list its frames; it needs one decoding pass")

    monkeypatch.setattr(media, "_decoded_starts", no_second_pass)
    np.testing.assert_array_equal(media.read_frames(path, [0.5, 1.99]), pictures[[12, 49]])


def test_packets_that_disagree_with_the_decoder_are_not_trusted(tmp_path, monkeypatch):
    # Packet times half a frame late: frame n would be taken for times it is not displayed at,
    # unless the decoding pass checks each frame's time and the frames' real times are decoded.
    path = make_video(tmp_path / "25fps.mp4", seconds=2.0, audio=False)
    pictures, _ = _every_frame(path)
    packet_starts = media._packet_starts
    monkeypatch.setattr(media, "_packet_starts", lambda *args: packet_starts(*args) + 0.02)
    np.testing.assert_array_equal(media.read_frames(path, [0.5, 0.53, 1.99]), pictures[[12, 13, 49]])


def test_rotation_is_applied(tmp_path):
    upright = make_video(tmp_path / "upright.mp4", seconds=2.0, fps=2, audio=False)
    turned = tmp_path / "turned.mp4"
    _ffmpeg("-i", str(upright), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(turned))
    times = [0.3, 1.7]
    frames = media.read_frames(turned, times)
    assert frames.shape == (2, 64, 48, 3)
    # ffmpeg 5 stores the tag as a display matrix of 90° counter-clockwise (ffprobe: rotation=90).
    np.testing.assert_array_equal(frames, np.rot90(media.read_frames(upright, times), k=1, axes=(1, 2)))


def test_read_frames_of_nothing_and_of_bad_files(videos, tmp_path):
    assert media.read_frames(videos["no_audio"], []).shape == (0, 48, 64, 3)
    sound = tmp_path / "sound.wav"
    _ffmpeg("-f", "lavfi", "-i", "sine=duration=1", str(sound))
    with pytest.raises(MediaError, match=r"sound\.wav: has no video stream"):
        media.read_frames(sound, [0.5])
    with pytest.raises(MediaError, match=r"truncated_data\.mp4: unreadable or corrupt media"):
        media.read_frames(videos["truncated_data"], [0.5, 2.5])


def test_timestamp_at_or_past_the_end(tmp_path):
    path = make_video(tmp_path / "2fps.mp4", seconds=5.0, fps=2, audio=False)
    assert media.read_frames(path, [4.999]).shape == (1, 48, 64, 3)
    for seconds in (5.0, 5.2):
        with pytest.raises(MediaError, match=rf"2fps\.mp4: timestamp {seconds:.3f}s is at or past the end of the "
                                             r"video \(5\.000s long\)"):
            media.read_frames(path, [1.0, seconds])
    with pytest.raises(MediaError, match=r"2fps\.mp4: timestamp -0\.100s is negative"):
        media.read_frames(path, [-0.1])


@pytest.mark.parametrize("name", ["truncated_moov", "truncated_data", "truncated"])
def test_partial_files_are_errors(videos, name):
    with pytest.raises(MediaError, match=f"{name}.*unreadable or corrupt media"):
        media.decode_audio(videos[name])


def test_missing_and_non_media_files(tmp_path):
    with pytest.raises(MediaError, match=r"ghost\.mp4: no such file"):
        media.probe(tmp_path / "ghost.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video")
    with pytest.raises(MediaError, match=r"notes\.mp4: unreadable or corrupt media"):
        media.probe(text)
    with pytest.raises(MediaError, match="not a file"):
        media.probe(tmp_path)


def test_ffmpeg_missing_says_how_to_install(videos, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MediaError, match="ffprobe was not found on PATH; install it"):
        media.probe(videos["with_audio"])


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_read_image(tmp_path, suffix):
    path = tmp_path / f"picture{suffix}"
    subprocess.run([shutil.which("ffmpeg"), "-v", "error", "-f", "lavfi", "-i", "testsrc=size=40x30:rate=1",
                    "-frames:v", "1", str(path)], check=True)
    image = media.read_image(path)
    assert image.shape == (30, 40, 3) and image.dtype == np.uint8
    assert image.std() > 10
