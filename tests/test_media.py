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
    no_audio = make_video(folder / "no_audio.mp4", seconds=3.0, audio=False)
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


def test_frames_at_timestamps(videos):
    frames = media.read_frames(videos["with_audio"], [0.0, 1.5, 2.9])
    assert frames.shape == (3, 48, 64, 3) and frames.dtype == np.uint8
    assert not np.array_equal(frames[0], frames[1])  # testsrc moves over time
    again = media.read_frames(videos["with_audio"], [1.5])
    np.testing.assert_array_equal(again[0], frames[1])


def test_one_pass_frames_equal_seeking_in_any_order(videos):
    times = [2.9, 0.3, 1.5, 0.3, 2.04]
    frames = media.read_frames(videos["with_audio"], times)
    info = media.probe(videos["with_audio"])
    for picture, seconds in zip(frames, times):
        np.testing.assert_array_equal(picture, media._seek_frame(info, seconds))


def test_times_closer_than_a_frame_fall_back_to_seeking(tmp_path):
    slow = make_video(tmp_path / "slow.mp4", seconds=4.0, fps=1, audio=False)
    frames = media.read_frames(slow, [0.2, 0.5, 1.5, 2.5])  # 0.2 and 0.5 lie between the frames at 0 s and 1 s
    info = media.probe(slow)
    for picture, seconds in zip(frames, [0.2, 0.5, 1.5, 2.5]):
        np.testing.assert_array_equal(picture, media._seek_frame(info, seconds))


def test_no_audio_stream(videos):
    with pytest.raises(MediaError, match=r"no_audio\.mp4: has no audio stream"):
        media.decode_audio(videos["no_audio"])


def test_timestamp_past_the_end(videos):
    with pytest.raises(MediaError, match=r"timestamp 5\.000s is past the end of the video \(3\.0\d+s long\)"):
        media.read_frames(videos["with_audio"], [1.0, 5.0])


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
