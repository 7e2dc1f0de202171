"""The procedural demo data set: determinism, each class's sound and picture, and the video files."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from clipsonic import media
from clipsonic.demo import synthetic
from clipsonic.errors import ClipsonicError, MediaError
from clipsonic.demo.synthetic import CLASSES, SAMPLE_RATE

SR = SAMPLE_RATE
SEEDS = (0, 1, 2)

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                  reason="ffmpeg is not installed")


def audio(label: str, seed: int, seconds: float = 6.0) -> np.ndarray:
    return synthetic.synthesize_audio(label, synthetic.clip_rng(seed, label, 0, 1), seconds).astype(np.float64)


# --- small signal measurements (NumPy only) -------------------------------------------------------

def band_share(wav: np.ndarray, low: float, high: float) -> float:
    """Fraction of the power between `low` and `high` Hz."""
    power = np.abs(np.fft.rfft(wav)) ** 2
    freqs = np.fft.rfftfreq(wav.size, 1 / SR)
    return float(power[(freqs >= low) & (freqs < high)].sum() / power.sum())


def frame_rms(wav: np.ndarray, seconds: float) -> np.ndarray:
    hop = int(seconds * SR)
    count = wav.size // hop
    return np.sqrt((wav[:count * hop].reshape(count, hop) ** 2).mean(axis=1))


def dominant_track(wav: np.ndarray, size: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Strongest frequency [frames] and energy [frames] of Hann-windowed frames."""
    count = 1 + (wav.size - size) // hop
    frames = wav[np.arange(size)[None] + hop * np.arange(count)[:, None]] * np.hanning(size)  # [frames, size]
    magnitude = np.abs(np.fft.rfft(frames, axis=1))
    return np.fft.rfftfreq(size, 1 / SR)[magnitude.argmax(axis=1)], (magnitude ** 2).sum(axis=1)


def sweep_rate(wav: np.ndarray) -> float:
    """Mean speed (kHz/s) at which the dominant frequency moves while the sound is loud."""
    freqs, energy = dominant_track(wav, 256, 32)
    loud = energy > 0.2 * energy.max()
    both = loud[1:] & loud[:-1]
    return float(np.abs(np.diff(freqs))[both].mean() / (32 / SR) / 1000)


def highpass(wav: np.ndarray, cutoff: float) -> np.ndarray:
    spectrum = np.fft.rfft(wav)
    spectrum[np.fft.rfftfreq(wav.size, 1 / SR) < cutoff] = 0
    return np.fft.irfft(spectrum, wav.size)


def periodicity(wav: np.ndarray) -> float:
    """Peak autocorrelation (lags 0.2-2 s) of the onset strength: near 1 for a steady beat."""
    strength = np.maximum(np.diff(np.log(frame_rms(wav, 0.005) + 1e-5)), 0)
    strength -= strength.mean()
    correlation = np.correlate(strength, strength, "full")[strength.size - 1:]
    return float(correlation[40:400].max() / correlation[0])


def onset_times(wav: np.ndarray) -> np.ndarray:
    """Times (s) where the 5 ms energy jumps by more than half the largest jump, 50 ms apart at least."""
    rise = np.diff(np.log(frame_rms(wav, 0.005) + 1e-6))
    peaks = [i for i in range(1, rise.size - 1) if rise[i] > 0.5 * rise.max() and rise[i] >= rise[i - 1]
             and rise[i] >= rise[i + 1]]
    kept: list[int] = []
    for peak in peaks:
        if not kept or peak - kept[-1] > 10:
            kept.append(peak)
    return np.array(kept) * 0.005


# --- audio ----------------------------------------------------------------------------------------

def test_classes_are_fixed():
    assert CLASSES == ("rain", "bell", "bird", "engine", "drum", "siren", "wind", "clock",
                       "thunder", "dog", "footsteps", "stream", "fire", "phone", "horn", "whistle")


@pytest.mark.parametrize("label", CLASSES)
def test_audio_is_deterministic_and_varies(label):
    first = synthetic.synthesize_audio(label, synthetic.clip_rng(0, label, 3, 1), 4.0)
    again = synthetic.synthesize_audio(label, synthetic.clip_rng(0, label, 3, 1), 4.0)
    other = synthetic.synthesize_audio(label, synthetic.clip_rng(0, label, 4, 1), 4.0)
    assert first.dtype == np.float32 and first.shape == (4 * SR,)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert np.isfinite(first).all() and 0.19 < np.abs(first).max() <= synthetic.PEAK_RANGE[1] + 1e-6


def test_engine_is_low():
    for seed in SEEDS:
        assert band_share(audio("engine", seed), 0, 300) > 0.95


def test_bird_is_high_with_fast_frequency_modulation():
    for seed in SEEDS:
        wav = audio("bird", seed)
        assert band_share(wav, 2000, 7000) > 0.95
        assert sweep_rate(wav) > 15  # kHz/s: vibrato and chirps


def test_siren_sweeps_slowly_in_the_mid_band():
    for seed in SEEDS:
        wav = audio("siren", seed)
        freqs, energy = dominant_track(wav, 2048, 512)
        loud = freqs[energy > 0.1 * energy.max()]
        assert 400 < np.percentile(loud, 5) and np.percentile(loud, 95) < 1600
        assert np.percentile(loud, 95) - np.percentile(loud, 5) > 300  # the pitch travels
        assert sweep_rate(wav) < 5  # ... but slowly, unlike a bird


def test_clock_ticks_regularly_and_high():
    for seed in SEEDS:
        wav = audio("clock", seed)
        gaps = np.diff(onset_times(wav))
        assert gaps.size >= 4
        assert 0.5 <= gaps.mean() <= 1.0 and gaps.std() / gaps.mean() < 0.02
        assert band_share(wav, 1000, 8000) > 0.8
        assert periodicity(highpass(wav, 1000)) > 0.5


def test_drum_beat_is_periodic_and_has_a_kick():
    for seed in SEEDS:
        wav = audio("drum", seed)
        assert periodicity(highpass(wav, 1000)) > 0.4
        assert band_share(wav, 0, 300) > 0.5
    for label in ("rain", "bird", "wind"):  # random events or none: no beat
        assert periodicity(highpass(audio(label, 0), 1000)) < 0.3


def test_bell_partials_are_inharmonic_and_decay():
    for seed in SEEDS:
        wav = audio("bell", seed)
        onset = int(np.argmax(frame_rms(wav, 0.01)[:50]) * 0.01 * SR)
        strike = wav[onset:onset + int(0.9 * SR)]  # strikes are at least 0.97 s apart
        magnitude = np.abs(np.fft.rfft(strike * np.hanning(strike.size)))
        freqs = np.fft.rfftfreq(strike.size, 1 / SR)
        candidates = [i for i in np.flatnonzero((freqs > 100) & (freqs < 4000))
                      if magnitude[i] >= magnitude[i - 1] and magnitude[i] >= magnitude[i + 1]]
        peaks: list[int] = []
        for i in sorted(candidates, key=lambda i: -magnitude[i]):
            if all(abs(freqs[i] - freqs[j]) > 30 for j in peaks):
                peaks.append(i)
            if len(peaks) == 5:
                break
        ratios = np.sort(freqs[peaks]) / freqs[peaks].min()
        assert np.abs(ratios - np.round(ratios)).max() > 0.2  # a partial off the harmonic series (the tierce)
        early, late = strike[int(0.05 * SR):int(0.25 * SR)], strike[int(0.7 * SR):]
        assert np.sqrt(np.mean(early ** 2)) > 1.4 * np.sqrt(np.mean(late ** 2))
        assert band_share(early, 1500, 8000) > band_share(late, 1500, 8000)  # high partials die first


def test_rain_is_broadband_and_steady_wind_is_low_and_gusty():
    for seed in SEEDS:
        rain, wind = audio("rain", seed), audio("wind", seed)
        assert band_share(rain, 2000, 7000) > 0.6 and band_share(rain, 500, 2000) > 0.05
        assert band_share(wind, 0, 1500) > 0.9
        rain_level, wind_level = frame_rms(rain, 0.5), frame_rms(wind, 0.5)
        assert rain_level.max() / rain_level.min() < 1.3
        assert wind_level.max() / wind_level.min() > 1.4


def test_peaks_leave_headroom_over_many_seeds():
    """Every class, 40 clips each: the peak lies in PEAK_RANGE (at most -4.4 dBFS), so the AAC
    encoder's overshoot (up to 1.5x on tones) stays under full scale."""
    low, high = synthetic.PEAK_RANGE
    for label in CLASSES:
        peaks = [np.abs(audio(label, seed, seconds=1.5)).max() for seed in range(40)]
        assert low - 1e-6 <= min(peaks) and max(peaks) <= high + 1e-6, label
        assert max(peaks) / min(peaks) > 1.8, label  # the level still varies within the class


@needs_ffmpeg
def test_encoded_sound_tracks_stay_under_full_scale(tmp_path):
    """The decoded AAC track of the tonal classes (where the codec overshoots most) never clips:
    write_clip checks it and re-encodes quieter if it would."""
    for label in ("siren", "whistle", "phone", "horn", "bird"):
        for index in range(3):
            spec = synthetic.ClipSpec(label, index, 2.0, "train", 7)
            path = synthetic.write_clip(spec, tmp_path / f"{label}_{index}.mp4", size=32)
            assert np.abs(media.decode_audio(path)).max() <= synthetic.ENCODED_PEAK_LIMIT, (label, index)


def test_write_clip_rescales_when_the_codec_overshoots(tmp_path, monkeypatch):
    """A decoded peak over the limit makes write_clip encode again, scaled down (checked, not assumed)."""
    from clipsonic.demo.synthetic import videos

    encoded: list[float] = []
    real_encode = videos._encode
    monkeypatch.setattr(videos, "_encode", lambda frames, wav, out, fps, sr: (encoded.append(float(np.abs(wav).max())),
                                                                           real_encode(frames, wav, out, fps, sr)))
    decoded = iter([1.2, 0.9])
    monkeypatch.setattr(videos, "decode_audio", lambda path, sr: np.array([next(decoded)], dtype=np.float32))
    synthetic.write_clip(synthetic.ClipSpec("siren", 0, 1.0, "train", 0), tmp_path / "a.mp4", size=32)
    assert len(encoded) == 2 and encoded[1] == pytest.approx(encoded[0] * 0.9 / 1.2, rel=1e-5)


def test_new_classes_sound_like_themselves():
    for seed in SEEDS:
        assert band_share(audio("thunder", seed), 0, 400) > 0.7  # a deep rumble
        assert band_share(audio("whistle", seed), 2000, 4000) > 0.8  # one piercing tone
        assert band_share(audio("horn", seed), 300, 3500) > 0.85  # buzzy mid tones
        assert 0.15 < band_share(audio("dog", seed), 300, 1000) < 0.9  # voiced, with a breathy part above
        phone = audio("phone", seed)
        assert band_share(phone, 650, 1400) > 0.7
        on = frame_rms(phone, 0.05) > 0.2 * frame_rms(phone, 0.05).max()
        assert 0.4 < on.mean() < 0.85  # rings and pauses
        # No 1-s stretch (the UNet's training crop) without a ring.
        assert np.convolve(on, np.ones(20), "valid").min() >= 4
        envelope = frame_rms(audio("footsteps", seed), 0.02)  # a regular gait: the loudness repeats every step
        envelope -= envelope.mean()
        correlation = np.correlate(envelope, envelope, "full")[envelope.size - 1:]
        assert correlation[15:50].max() / correlation[0] > 0.45  # at a lag of 0.3-1 s
        assert band_share(audio("stream", seed), 250, 3500) > 0.8
        crackle, hiss = highpass(audio("fire", seed), 900), highpass(audio("rain", seed), 900)
        kurtosis = [((w - w.mean()) ** 4).mean() / w.var() ** 2 for w in (crackle, hiss)]
        assert kurtosis[0] > 20 > 5 > kurtosis[1]  # sparse clicks, not a steady hiss


def test_unknown_class_and_bad_length():
    with pytest.raises(ClipsonicError, match="unknown class 'cat'; choose from rain, bell"):
        synthetic.synthesize_audio("cat", np.random.default_rng(0), 1.0)
    with pytest.raises(ClipsonicError, match="unknown class"):
        synthetic.class_picture("cat")
    with pytest.raises(ClipsonicError, match="cannot synthesize"):
        synthetic.synthesize_audio("rain", np.random.default_rng(0), 0.0)
    with pytest.raises(ClipsonicError, match="scene parameters are for 'rain'"):
        synthetic.render_frame("bell", synthetic.scene_params("rain", np.random.default_rng(0)), 0.0, 32)


# --- pictures -------------------------------------------------------------------------------------

@pytest.mark.parametrize("label", CLASSES)
def test_frames_are_deterministic_and_move(label):
    params = synthetic.scene_params(label, synthetic.clip_rng(0, label, 0, 2))
    again = synthetic.scene_params(label, synthetic.clip_rng(0, label, 0, 2))
    frame = synthetic.render_frame(label, params, 1.0)
    assert frame.shape == (224, 224, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, synthetic.render_frame(label, again, 1.0))
    seconds = [synthetic.render_frame(label, params, t).astype(int) for t in (2.0, 3.0)]  # `preprocess` samples ~1/s
    assert max(np.abs(a - b).mean() for a, b in zip([frame, *seconds], seconds)) > 0.3
    other = synthetic.render_frame(label, synthetic.scene_params(label, synthetic.clip_rng(0, label, 1, 2)), 1.0)
    assert np.abs(frame.astype(int) - other).mean() > 3


def test_clip_frames_match_render_frame():
    spec = synthetic.ClipSpec("clock", 0, 2.0, "train", 0)
    frames = synthetic.clip_frames(spec, fps=2, size=48)
    assert frames.shape == (4, 48, 48, 3)
    params = synthetic.scene_params("clock", synthetic.clip_rng(0, "clock", 0, 2))
    np.testing.assert_array_equal(frames[3], synthetic.render_frame("clock", params, 1.5, 48))


def _pooled(label: str, seed: int, size: int = 64) -> np.ndarray:
    """A frame at a seed-chosen time, mean-pooled to 4 x 4 x RGB."""
    params = synthetic.scene_params(label, synthetic.clip_rng(seed, label, 0, 2))
    frame = synthetic.render_frame(label, params, float(np.random.default_rng(seed).uniform(0, 10)), size)
    return frame.reshape(4, size // 4, 4, size // 4, 3).mean(axis=(1, 3)).ravel()


def test_pictures_separate_by_nearest_centroid_on_fresh_clips():
    centroids = np.stack([np.mean([_pooled(label, seed) for seed in range(8)], axis=0) for label in CLASSES])
    for label in CLASSES:
        for seed in range(100, 104):
            assert CLASSES[np.argmin(((centroids - _pooled(label, seed)) ** 2).sum(axis=1))] == label
    mean_colours = centroids.reshape(len(CLASSES), 16, 3).mean(axis=1)
    for label in CLASSES:  # class_picture: an unseen picture that still looks like its class
        colour = synthetic.class_picture(label, seed=3, size=64).reshape(-1, 3).mean(axis=0)
        assert CLASSES[np.argmin(((mean_colours - colour) ** 2).sum(axis=1))] == label


# --- clips, videos and the data set ---------------------------------------------------------------

def test_plan_clips_lengths_splits_and_stability():
    specs = synthetic.plan_clips(10, seed=0, seconds_range=(4, 10), fps=4)
    assert len(specs) == 10 * len(CLASSES) and [s.label for s in specs[::10]] == list(CLASSES)
    assert all(4 <= s.seconds <= 10 and (s.seconds * 4).is_integer() for s in specs)
    assert [s.split for s in specs[:10]] == ["train"] * 8 + ["test"] * 2
    assert len({s.seconds for s in specs}) > 10
    more = synthetic.plan_clips(20, seed=0)
    assert [s.seconds for s in more[:10]] == [s.seconds for s in specs[:10]]  # adding clips keeps the old ones
    assert [s.split for s in synthetic.plan_clips(2)[:2]] == ["train", "test"]
    with pytest.raises(ClipsonicError, match="0 < shortest <= longest"):
        synthetic.plan_clips(2, seconds_range=(5, 4))


def test_reference_clips_lie_outside_every_data_set():
    reference = synthetic.reference_clips(3, seed=0)
    assert len(reference) == 3 * len(CLASSES) and {s.split for s in reference} == {"reference"}
    assert min(s.index for s in reference) == synthetic.REFERENCE_FIRST_INDEX
    assert all(4 <= s.seconds <= 10 for s in reference)
    assert reference == synthetic.reference_clips(3, seed=0)  # deterministic
    with pytest.raises(ClipsonicError, match="clips per class"):
        synthetic.plan_clips(synthetic.REFERENCE_FIRST_INDEX + 1)
    first = synthetic.clip_audio(reference[0])
    assert not np.array_equal(first[:1000], synthetic.clip_audio(synthetic.plan_clips(1)[0])[:1000])


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        pytest.skip("ffmpeg is not installed")
    out = tmp_path_factory.mktemp("demo")
    return synthetic.make_demo_data(out, clips_per_class=2, seconds_range=(4, 4), progress=False)


def test_make_demo_data_writes_decodable_labelled_videos(tiny_set):
    root = tiny_set.labels.parent
    with open(tiny_set.labels, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["label"], row["split"]) for row in rows[:2]] == [("rain", "train"), ("rain", "test")]
    assert sorted(row["file"] for row in rows) == sorted(f"{c}/{c}_{i:03d}.mp4" for c in CLASSES for i in range(2))
    assert tiny_set.written == 2 * len(CLASSES) and tiny_set.skipped == 0
    assert sorted(p.relative_to(root / "videos").as_posix() for p in (root / "videos").rglob("*.mp4")) == sorted(
        row["file"] for row in rows)
    for row in rows:
        info = media.probe(root / "videos" / row["file"])
        assert info.duration == pytest.approx(4.0, abs=0.05) and info.fps == pytest.approx(4.0)
        assert (info.width, info.height, info.sample_rate, info.channels) == (224, 224, SR, 1)
    spec = tiny_set.clips[2]  # bell_000
    path = root / "videos" / spec.file
    decoded = media.decode_audio(path)
    original = synthetic.clip_audio(spec)
    assert abs(decoded.size - original.size) < 1024
    count = min(decoded.size, original.size)
    assert np.corrcoef(decoded[:count], original[:count])[0, 1] > 0.95  # AAC keeps the waveform's alignment
    frame = media.read_frames(path, [1.0])[0]
    assert np.abs(frame.astype(int) - synthetic.clip_frames(spec)[4]).mean() < 6  # H.264 loss only


@needs_ffmpeg
def test_same_clip_gives_the_same_file_bytes(tmp_path):
    spec = synthetic.plan_clips(1, seconds_range=(1, 1))[5]
    first = synthetic.write_clip(spec, tmp_path / "a.mp4", size=32)
    second = synthetic.write_clip(spec, tmp_path / "b.mp4", size=32)
    assert first.read_bytes() == second.read_bytes()


@needs_ffmpeg
def test_resume_skips_finished_clips_and_redoes_interrupted_ones(tmp_path):
    settings = dict(clips_per_class=1, seconds_range=(1, 1), size=32, progress=False)
    first = synthetic.make_demo_data(tmp_path, **settings)
    videos = tmp_path / "videos"
    stamps = {p: p.stat().st_mtime_ns for p in videos.rglob("*.mp4")}
    again = synthetic.make_demo_data(tmp_path, **settings)
    assert (again.written, again.skipped) == (0, len(CLASSES))
    assert {p: p.stat().st_mtime_ns for p in videos.rglob("*.mp4")} == stamps
    # A run killed mid-write leaves a hidden temporary file and no final one.
    (videos / "rain" / "rain_000.mp4").unlink()
    stale = videos / "rain" / ".rain_000.mp4.x1y2z3.tmp.mp4"
    stale.write_bytes(b"\x00\x00\x00\x18ftypisom")
    resumed = synthetic.make_demo_data(tmp_path, **settings)
    assert (resumed.written, resumed.skipped) == (1, len(CLASSES) - 1) and not stale.exists()
    assert media.probe(videos / "rain" / "rain_000.mp4").duration == pytest.approx(1.0, abs=0.05)
    assert first.labels.read_text() == resumed.labels.read_text()
    with pytest.raises(ClipsonicError, match="other settings"):
        synthetic.make_demo_data(tmp_path, **{**settings, "seed": 1})


@needs_ffmpeg
def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def broken(frames, audio, out, fps, sample_rate):
        out.write_bytes(b"half a video")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(synthetic.videos, "_encode", broken)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        synthetic.make_demo_data(tmp_path, clips_per_class=1, seconds_range=(1, 1), size=32, workers=1, progress=False)
    assert [p for p in (tmp_path / "videos").rglob("*") if p.is_file()] == []
    assert not (tmp_path / "labels.csv").exists()


def test_environment_errors(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    if shutil.which("ffmpeg") is not None:
        with pytest.raises(ClipsonicError, match="cannot write the demo data there"):
            synthetic.make_demo_data(blocker / "out", clips_per_class=1, progress=False)
    with pytest.raises(ClipsonicError, match="size must be even"):
        synthetic.make_demo_data(tmp_path / "odd", clips_per_class=1, size=33, progress=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MediaError, match="ffmpeg was not found on PATH"):
        synthetic.make_demo_data(tmp_path / "out", clips_per_class=1, progress=False)
    assert not (tmp_path / "out").exists()
