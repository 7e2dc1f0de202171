"""A deterministic, procedural audio-visual data set: labelled videos of eight sound classes.

Not from the paper: CLIPSonic trains on VGGSound, which a test or a CPU demo cannot download.
This module writes a small stand-in with the same shape of problem: real video files (H.264 +
AAC in MP4, made by the ffmpeg binary), a picture track whose content tells the class, and a
sound track whose spectro-temporal character tells the same class, plus ``labels.csv``
(``file,label,split``) in the format `clipsonic preprocess` reads.

Every clip is drawn from its own ``numpy.random.Generator``, seeded by ``(seed, class, clip,
stream)``: clips can be made in any order or in parallel, adding clips leaves the earlier ones
unchanged, and the audio does not depend on the picture's random draws (or the reverse).
Within a class, pitch, tempo, loudness, noise floor, picture position/scale/rotation, colour
shade and background texture vary, so a model has to learn the class rather than a clip.

Layout written by `make_demo_data`::

    OUT/videos/<class>/<class>_<nnn>.mp4   4-10 s, 224 x 224 RGB at 4 fps, 16 kHz mono AAC
    OUT/labels.csv                          file,label,split (file relative to OUT/videos)
    OUT/demo_data.json                      the settings the clips were made with

Each video is written under a hidden temporary name and renamed when complete, so an
interrupted run never leaves a partial file under a final name; a re-run skips finished clips.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np

from clipsonic.errors import ClipsonicError, MediaError
from clipsonic.fileio import atomic_path, write_json_atomic, write_text_atomic
from clipsonic.media import _last_reason, find_binary

CLASSES = ("rain", "bell", "bird", "engine", "drum", "siren", "wind", "clock")
SAMPLE_RATE = 16000
FPS = 4  # `preprocess` samples about one frame a second; 4 fps still shows motion and encodes fast
SIZE = 224  # CLIP's input resolution
SETTINGS_NAME = "demo_data.json"
SETTINGS_FORMAT = "clipsonic.demo-data"
SETTINGS_VERSION = 1  # bump whenever synthesis changes, so an old folder is not resumed with new clips

# Independent random streams of one clip (the last entry of its seed sequence).
_DURATION_STREAM, _AUDIO_STREAM, _SCENE_STREAM, _PICTURE_STREAM = 0, 1, 2, 3


def _class_index(label: str) -> int:
    if label not in CLASSES:
        raise ClipsonicError(f"unknown class {label!r}; choose from {', '.join(CLASSES)}")
    return CLASSES.index(label)


def clip_rng(seed: int, label: str, index: int, stream: int) -> np.random.Generator:
    """The generator of one stream of one clip; independent of every other (seed, clip, stream)."""
    return np.random.default_rng([int(seed), _class_index(label), int(index), int(stream)])


# ----------------------------------------------------------------------------------------------
# Audio building blocks (float64 [T] arrays; each class function returns an un-normalised signal)

def _times(n: int, sr: int) -> np.ndarray:
    return np.arange(n) / sr


def _band_noise(rng: np.random.Generator, n: int, sr: int, low: float, high: float, order: int = 2) -> np.ndarray:
    """Gaussian noise band-limited to about [low, high] Hz (Butterworth-like edges of `order`), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.maximum(np.fft.rfftfreq(n, 1.0 / sr), 1e-3)
    gain = 1.0 / np.sqrt((1.0 + (low / freqs) ** (2 * order)) * (1.0 + (freqs / high) ** (2 * order)))
    out = np.fft.irfft(spectrum * gain, n)
    return out / (out.std() + 1e-12)


def _slow_curve(rng: np.random.Generator, n: int, sr: int, rate: float) -> np.ndarray:
    """A smooth random curve in [0, 1] with about `rate` new values a second (cosine-interpolated knots)."""
    position = _times(n, sr) * rate
    knots = rng.uniform(0.0, 1.0, int(position[-1]) + 2)
    index = position.astype(np.int64)
    blend = (1.0 - np.cos(np.pi * (position - index))) / 2.0
    return knots[index] * (1.0 - blend) + knots[index + 1] * blend


def _ping(sr: int, freq: float, tau: float, glide: float = 0.0) -> np.ndarray:
    """A decaying sinusoid (a struck resonance), 6 time constants long; `glide` is Hz/s of pitch drift."""
    t = _times(max(int(6 * tau * sr), 2), sr)
    phase = 2 * np.pi * (freq * t + 0.5 * glide * t * t)
    return np.exp(-t / tau) * np.sin(phase)


def _add(out: np.ndarray, onset: int, sound: np.ndarray) -> None:
    """Mix `sound` into `out` from sample `onset`, cut at the end of `out`."""
    if onset >= out.size:
        return
    length = min(sound.size, out.size - onset)
    out[onset:onset + length] += sound[:length]


def _tone(sr: int, freq: np.ndarray, harmonics: Sequence[float]) -> np.ndarray:
    """Sum of harmonics of a time-varying frequency `freq` [T]; harmonics above 0.45 sr are left out
    (they would alias)."""
    phase = 2 * np.pi * np.cumsum(freq) / sr
    out = np.zeros_like(freq)
    for k, amplitude in enumerate(harmonics, start=1):
        audible = (k * freq) < 0.45 * sr
        out += amplitude * np.sin(k * phase) * audible
    return out


# ----------------------------------------------------------------------------------------------
# One function per class: (rng, samples, sample rate) -> signal

def _rain_audio(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Steady bright hiss plus many tiny droplets: short, high, slightly upward-gliding pings."""
    out = rng.uniform(0.25, 0.4) * _band_noise(rng, n, sr, rng.uniform(400, 900), rng.uniform(5000, 7500))
    count = rng.poisson(rng.uniform(20, 60) * n / sr)
    onsets = rng.integers(0, n, count)
    freqs = rng.uniform(1500, min(5500, 0.4 * sr), count)
    taus = rng.uniform(0.002, 0.008, count)
    amplitudes = rng.uniform(0.4, 1.2, count)  # no rare loud drop: the peak sets the clip's level
    for onset, freq, tau, amplitude in zip(onsets, freqs, taus, amplitudes):
        _add(out, onset, amplitude * _ping(sr, freq, tau, glide=freq * 20))
    return out


# Church-bell partials: (frequency / strike tone, amplitude, decay time / the hum's). The ratios
# (hum 0.5, tierce 1.19, quint 1.5, nominal 2, ...) are what makes a bell sound inharmonic.
_BELL_PARTIALS = ((0.5, 0.6, 1.0), (1.0, 1.0, 0.7), (1.19, 0.6, 0.5), (1.5, 0.45, 0.4), (2.0, 0.7, 0.35),
                  (2.51, 0.35, 0.25), (2.66, 0.3, 0.2), (3.01, 0.25, 0.18), (4.16, 0.15, 0.12))


def _bell_audio(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Repeated strikes of one bell: inharmonic partials, the higher ones dying away faster."""
    strike_tone = rng.uniform(350, 650)
    hum_tau = rng.uniform(1.2, 2.5)
    t = _times(min(n, int(5 * hum_tau * sr)), sr)
    strike = np.zeros_like(t)
    for ratio, amplitude, decay in _BELL_PARTIALS:
        freq = strike_tone * ratio * (1 + rng.normal(0, 0.005))
        if freq < 0.45 * sr:
            phase = rng.uniform(0, 2 * np.pi)
            strike += amplitude * np.exp(-t / (hum_tau * decay)) * np.sin(2 * np.pi * freq * t + phase)
    clang = _band_noise(rng, t.size, sr, 2000, 6000) * np.exp(-t / 0.004)  # the clapper's hit
    strike += 0.3 * clang
    out = np.zeros(n)
    period = rng.uniform(1.0, 2.2)
    onset = rng.uniform(0.0, 0.3)
    while onset < n / sr:
        _add(out, int(onset * sr), rng.uniform(0.7, 1.0) * strike)
        onset += period * rng.uniform(0.97, 1.03)
    return out


def _bird_chirp(rng: np.random.Generator, sr: int, base: float, seconds: float, sweep: float,
                fm_rate: float, fm_depth: float) -> np.ndarray:
    """One chirp: a pitch sweep with fast vibrato (FM) under a smooth envelope."""
    t = _times(max(int(seconds * sr), 2), sr)
    freq = base + sweep * t / seconds + fm_depth * np.sin(2 * np.pi * fm_rate * t + rng.uniform(0, 2 * np.pi))
    freq = np.clip(freq, 1500.0, 0.45 * sr)
    envelope = np.sin(np.pi * t / seconds) ** 2
    return envelope * _tone(sr, freq, (1.0, 0.12))


def _bird_audio(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Phrases of 3-8 high FM chirps separated by short pauses, over a faint leaf rustle."""
    out = 0.015 * _band_noise(rng, n, sr, 1000, 7000)
    voice = rng.uniform(2800, 4500)
    time = rng.uniform(0.0, 0.4)
    while time < n / sr:
        sweep, fm_rate = rng.uniform(-1500, 1500), rng.uniform(15, 45)
        fm_depth, length = rng.uniform(150, 600), rng.uniform(0.04, 0.15)
        for _ in range(rng.integers(3, 9)):
            base = voice * rng.uniform(0.92, 1.08)
            chirp = _bird_chirp(rng, sr, base, length, sweep, fm_rate, fm_depth)
            _add(out, int(time * sr), rng.uniform(0.6, 1.0) * chirp)
            time += length + rng.uniform(0.02, 0.08)
        time += rng.uniform(0.25, 1.0)
    return out


def _engine_audio(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Low harmonic rumble at the firing rate (25-55 Hz, drifting) plus combustion-pulsed low noise."""
    f0 = rng.uniform(25, 55)
    freq = f0 * (1 + 0.06 * (_slow_curve(rng, n, sr, rng.uniform(0.2, 0.6)) - 0.5))
    count = int(280 // f0)  # keep the harmonics below ~280 Hz: the class is "all low"
    harmonics = rng.uniform(0.5, 1.0, count) / np.arange(1, count + 1) ** 0.8
    phase = 2 * np.pi * np.cumsum(freq) / sr
    pulses = 0.6 + 0.4 * np.maximum(np.sin(phase), 0.0)  # each firing pushes a burst of noise
    rumble = _band_noise(rng, n, sr, 20, 180) * pulses
    return _tone(sr, freq, harmonics) + rng.uniform(0.3, 0.6) * rumble


def _kick(rng: np.random.Generator, sr: int) -> np.ndarray:
    """A bass drum: a sine whose pitch falls from ~150 to ~50 Hz, with a short click."""
    tau = rng.uniform(0.15, 0.3)
    t = _times(int(5 * tau * sr), sr)
    start, end = rng.uniform(120, 180), rng.uniform(45, 60)
    freq = end + (start - end) * np.exp(-t / 0.03)
    body = np.exp(-t / tau) * np.sin(2 * np.pi * np.cumsum(freq) / sr)
    click = _band_noise(rng, t.size, sr, 1000, 4000) * np.exp(-t / 0.002)
    return body + 0.15 * click


def _snare(rng: np.random.Generator, sr: int) -> np.ndarray:
    """A snare drum: a burst of mid/high noise (the wires) over a short ~200 Hz tone (the shell)."""
    tau = rng.uniform(0.08, 0.16)
    t = _times(int(5 * tau * sr), sr)
    wires = _band_noise(rng, t.size, sr, 1500, 6000) * np.exp(-t / tau)
    shell = np.sin(2 * np.pi * rng.uniform(180, 240) * t) * np.exp(-t / 0.05)
    return 0.5 * wires + 0.6 * shell


def _drum_audio(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A rock beat on an eighth-note grid at 80-150 BPM: kick on 1 and 3, snare on 2 and 4, random extras."""
    eighth = 30.0 / rng.uniform(80, 150)
    kick, snares = _kick(rng, sr), [_snare(rng, sr) for _ in range(3)]
    extra_kicks = [step for step in (3, 5, 7) if rng.random() < 0.4]
    out = np.zeros(n)
    start = rng.uniform(0.0, eighth)
    for step in range(int((n / sr - start) / eighth) + 1):
        onset = int((start + step * eighth) * sr)
        position = step % 8
        if position in (0, 4) or position in extra_kicks:
            _add(out, onset, rng.uniform(0.8, 1.0) * kick)
        if position in (2, 6):
            _add(out, onset, rng.uniform(0.7, 1.0) * snares[rng.integers(len(snares))])
    return out + rng.uniform(0.2, 0.4) * _room(rng, out, sr, rng.uniform(0.2, 0.4))


def _room(rng: np.random.Generator, dry: np.ndarray, sr: int, decay: float) -> np.ndarray:
    """`dry` through a small room's reverberation: an exponentially decaying noise burst, `decay`
    seconds to -60 dB (FFT convolution, cut to the dry length)."""
    t = _times(int(decay * sr), sr)
    response = rng.standard_normal(t.size) * 10 ** (-3 * t / decay)
    size = dry.size + response.size
    wet = np.fft.irfft(np.fft.rfft(dry, size) * np.fft.rfft(response, size), size)[:dry.size]
    return wet / (np.abs(wet).max() + 1e-12) * np.abs(dry).max()


def _siren_audio(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A wailing tone sweeping up and down (0.25-0.8 Hz) across about 500-1400 Hz, echoing in the street."""
    t = _times(n, sr)
    rate = rng.uniform(0.25, 0.8)
    centre = rng.uniform(800, 1000)
    freq = centre * (1 + rng.uniform(0.25, 0.4) * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
    swell = 0.7 + 0.3 * _slow_curve(rng, n, sr, 0.3)  # the vehicle comes and goes
    dry = swell * _tone(sr, freq, (1.0, 0.2, 0.25, 0.05))  # weak upper harmonics: the sound stays mid-band
    # The street's echo smears the sweep, so every band of the range keeps some energy.
    return dry + rng.uniform(0.4, 0.6) * _room(rng, dry, sr, rng.uniform(0.8, 1.5))


def _wind_audio(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Three low noise bands (no energy above ~1.5 kHz: a dark roar), each swelling and fading
    slowly, under slow gusts."""
    gust = 0.1 + 0.9 * _slow_curve(rng, n, sr, rng.uniform(0.3, 0.7)) ** 1.5  # lulls up to 20 dB below the gusts
    out = np.zeros(n)
    for centre in np.array((180.0, 400.0, 800.0)) * rng.uniform(0.8, 1.25):
        level = 0.2 + 0.8 * _slow_curve(rng, n, sr, rng.uniform(0.2, 0.6))
        out += level * _band_noise(rng, n, sr, centre / 1.6, centre * 1.6, order=4)
    return out * gust


def _clock_audio(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Exactly regular tick-tock clicks (1-2 Hz): short high resonances, the tock a little lower."""
    interval = rng.uniform(0.5, 1.0)
    tick_freq = rng.uniform(2000, 3500)
    ratio = rng.uniform(1.4, 1.8)

    def click(freq: float) -> np.ndarray:
        sound = _ping(sr, freq, rng.uniform(0.008, 0.016))  # the metal of the escapement rings briefly
        _add(sound, 0, 0.5 * _ping(sr, min(freq * ratio, 0.45 * sr), 0.004))  # a shorter, higher resonance
        burst = _band_noise(rng, sound.size, sr, 1000, 7000) * np.exp(-_times(sound.size, sr) / 0.001)
        return sound + 0.3 * burst

    tick, tock = click(tick_freq), click(tick_freq * rng.uniform(0.6, 0.8))
    out = 0.015 * _band_noise(rng, n, sr, 100, 3000)  # room tone
    onset = rng.uniform(0.0, interval)
    count = 0
    while onset < n / sr:
        _add(out, int(onset * sr), tick if count % 2 == 0 else tock)
        onset += interval
        count += 1
    return out


_SYNTHS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "rain": _rain_audio, "bell": _bell_audio, "bird": _bird_audio, "engine": _engine_audio,
    "drum": _drum_audio, "siren": _siren_audio, "wind": _wind_audio, "clock": _clock_audio,
}


def synthesize_audio(label: str, rng: np.random.Generator, seconds: float,
                     sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 [round(seconds * sample_rate)] of class `label`, peak in [0.3, 0.9].

    The peak level (loudness) and a white noise floor 50-60 dB below it vary with `rng`, so
    level is no clue to the class.
    """
    _class_index(label)
    if seconds <= 0 or sample_rate < 8000:
        raise ClipsonicError(f"cannot synthesize {seconds} s at {sample_rate} Hz (needs > 0 s and >= 8000 Hz)")
    n = max(int(round(seconds * sample_rate)), 16)
    wav = _SYNTHS[label](rng, n, sample_rate)
    wav *= rng.uniform(0.3, 0.9) / (np.abs(wav).max() + 1e-12)
    wav += 10 ** (rng.uniform(-60, -50) / 20) * rng.standard_normal(n)
    return wav.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Picture building blocks. Coordinates are in [-1, 1] across the frame, y pointing down; shapes
# are signed distances (negative inside), turned into anti-aliased coverage one pixel wide.

@dataclasses.dataclass
class _Frame:
    """A picture being painted: `image` float32 [3, H, W] in 0-255 (planar: blending one plane at
    a time is several times faster than [H, W, 3]), grid coordinates `gx`/`gy` [H, W], the clip's
    jittered object coordinates `x`/`y` [H, W] and the size of one pixel in each."""

    image: np.ndarray
    gx: np.ndarray
    gy: np.ndarray
    x: np.ndarray
    y: np.ndarray
    pixel: float  # one pixel in object units
    grid_pixel: float  # one pixel in grid units

    def paint(self, distance: np.ndarray, colour, opacity: float | np.ndarray = 1.0, grid: bool = False) -> None:
        """Paint `colour` (RGB, or planar [3, H, W]) where `distance` < 0, anti-aliased over one pixel;
        `opacity` is a number or a per-pixel weight [H, W]."""
        coverage = np.clip(0.5 - distance / (self.grid_pixel if grid else self.pixel), 0.0, 1.0)
        self.glow(coverage * opacity, colour)

    def glow(self, weight: np.ndarray, colour) -> None:
        """Blend `colour` in with a weight [H, W] in [0, 1], only over the rows and columns it touches."""
        rows, cols = np.flatnonzero(weight.any(axis=1)), np.flatnonzero(weight.any(axis=0))
        if rows.size == 0:
            return
        window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        colour = np.asarray(colour, dtype=np.float32)
        for channel in range(3):
            plane = self.image[channel][window]
            target = colour[channel][window] if colour.ndim == 3 else colour[channel]
            plane += weight[window] * (target - plane)


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    gx, gy = np.meshgrid(centres, centres)  # [H, W] each; row index is y
    gx.flags.writeable = gy.flags.writeable = False
    return gx, gy


@lru_cache(maxsize=8)
def _upsampler(low: int, size: int) -> np.ndarray:
    """Bilinear interpolation weights [size, low] from `low` knots across `size` pixels."""
    position = np.clip((np.arange(size) + 0.5) / size * low - 0.5, 0, low - 1)
    first = np.minimum(position.astype(np.int64), low - 2)
    blend = (position - first).astype(np.float32)
    weights = np.zeros((size, low), dtype=np.float32)
    weights[np.arange(size), first] = 1 - blend
    weights[np.arange(size), first + 1] = blend
    weights.flags.writeable = False  # cached and shared between threads
    return weights


def _rotate(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(angle), math.sin(angle)
    return c * x - s * y, s * x + c * y


def _length(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.sqrt(x * x + y * y)  # np.hypot is several times slower on float32


def _circle(x, y, cx: float, cy: float, r: float) -> np.ndarray:
    return _length(x - cx, y - cy) - r


def _ellipse(x, y, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
    u, v = _rotate(x - cx, y - cy, -angle)
    return (_length(u / rx, v / ry) - 1.0) * min(rx, ry)  # approximate, exact enough for an edge


def _box(x, y, cx: float, cy: float, half_w: float, half_h: float, angle: float = 0.0,
         radius: float = 0.0) -> np.ndarray:
    u, v = _rotate(x - cx, y - cy, -angle)
    qx, qy = np.abs(u) - half_w + radius, np.abs(v) - half_h + radius
    outside = _length(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0) - radius


def _segment(x, y, ax: float, ay: float, bx: float, by: float, width: float) -> np.ndarray:
    """A capsule of half-width `width` from (ax, ay) to (bx, by)."""
    dx, dy = bx - ax, by - ay
    along = np.clip(((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy + 1e-12), 0, 1)
    return _length(x - ax - along * dx, y - ay - along * dy) - width


def _mix(a, b, weight: np.ndarray) -> np.ndarray:
    """Per-pixel colour, planar [3, H, W], between RGB colours `a` and `b` (shading)."""
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    return a[:, None, None] + np.clip(weight, 0, 1).astype(np.float32) * (b - a)[:, None, None]


# ----------------------------------------------------------------------------------------------
# Scenes: a base palette (RGB) per class; each class paints a backdrop and its moving parts.

_PALETTES = {
    "rain": dict(top=(60, 75, 100), bottom=(105, 120, 145), cloud=(48, 54, 66), streak=(195, 210, 230),
                 ground=(45, 55, 75), ripple=(150, 165, 190)),
    "bell": dict(top=(95, 35, 35), bottom=(55, 20, 25), bell=(220, 172, 55), shade=(140, 100, 28),
                 shine=(255, 235, 150), yoke=(70, 45, 30), clapper=(110, 80, 30), spot=(150, 70, 50)),
    "bird": dict(top=(115, 180, 95), bottom=(45, 105, 50), leaf_light=(125, 195, 90), leaf_dark=(35, 95, 45),
                 branch=(95, 65, 40), bird=(30, 32, 38), beak=(235, 150, 40), eye=(240, 240, 230)),
    "engine": dict(top=(72, 72, 76), bottom=(36, 36, 40), block=(185, 35, 30), block_dark=(110, 22, 20),
                   head=(165, 165, 172), pulley=(22, 22, 25), pipe=(125, 125, 130), shadow=(15, 15, 15)),
    "drum": dict(top=(110, 50, 130), bottom=(58, 24, 80), spot=(175, 110, 195), shell=(230, 115, 35),
                 hoop=(195, 195, 200), head=(238, 228, 205), lace=(250, 240, 220), stick=(170, 120, 70)),
    "siren": dict(top=(8, 10, 28), bottom=(30, 30, 46), roof=(24, 24, 30), bar=(62, 62, 70),
                  red=(250, 35, 30), blue=(40, 80, 255), dim_red=(90, 20, 20), dim_blue=(20, 30, 90),
                  street=(210, 175, 90)),
    "wind": dict(top=(180, 208, 230), bottom=(222, 234, 240), swirl=(252, 253, 255), stream=(238, 245, 250),
                 leaf=(160, 125, 60)),
    "clock": dict(top=(172, 122, 76), bottom=(132, 88, 52), grain=(120, 80, 45), face=(246, 244, 236),
                  rim=(45, 40, 38), marks=(30, 30, 30), second=(215, 30, 30), shadow=(40, 25, 15)),
}


# Each class paints in two steps: its backdrop (what never moves; drawn once per clip) and its
# moving parts (drawn on a copy of the backdrop for every frame).

def _rain_backdrop(f: _Frame, p: dict) -> None:
    for cx, cy, rx, ry in p["clouds"]:
        f.paint(_ellipse(f.gx, f.gy, cx, cy, rx, ry), p["colours"]["cloud"], 0.9, grid=True)
    f.paint(p["ground_y"] - f.gy, p["colours"]["ground"], grid=True)


def _rain_moving(f: _Frame, p: dict, t: float) -> None:
    # Falling streaks: the frame is cut into slanted columns; each column has its own dash phase.
    across, along = _rotate(f.gx, f.gy, -p["slant"])
    spacing, period = p["spacing"], p["period"]
    column = np.floor((across + 2) / spacing).astype(np.int64) % len(p["phases"])
    side = np.abs((across + 2) - (column + 0.5) * spacing - p["offsets"][column] * spacing) - p["width"]
    position = (((along - p["speed"] * t) / period + p["phases"][column]) % 1.0) * period
    f.paint(np.maximum(side, np.maximum(position - p["length"], -position)), p["colours"]["streak"], 0.75, grid=True)
    for cx, cy, phase in p["ripples"]:  # rings spreading on the puddles
        grow = (t * 0.8 + phase) % 1.0
        ring = np.abs(_ellipse(f.gx, f.gy, cx, cy, 0.03 + 0.2 * grow, 0.01 + 0.05 * grow)) - 0.008
        f.paint(ring, p["colours"]["ripple"], 1.0 - grow, grid=True)


def _bell_backdrop(f: _Frame, p: dict) -> None:
    for cx, cy, r in p["spots"]:  # warm out-of-focus lights behind
        f.glow(0.35 * np.exp(-(_length(f.gx - cx, f.gy - cy) / r) ** 2), p["colours"]["spot"])
    f.paint(_box(f.x, f.y, 0, -0.64, 0.5, 0.05, radius=0.02), p["colours"]["yoke"])


def _bell_moving(f: _Frame, p: dict, t: float) -> None:
    c = p["colours"]
    swing = p["swing"] * math.sin(2 * math.pi * p["swing_rate"] * t + p["swing_phase"])
    x, y = _rotate(f.x, f.y + 0.58, -swing)  # swing about the pivot under the yoke
    y = y - 0.58
    width = p["width"]
    flare = width * (0.16 + 0.26 * np.clip((y + 0.5) / 0.8, 0, 1) ** 2.2)
    body = np.maximum(np.abs(x) - flare, np.maximum(-0.5 - y, y - 0.3))
    shading = _mix(c["bell"], c["shade"], 0.35 + 1.2 * x)
    f.paint(_circle(x, y, -0.6 * math.sin(swing), 0.38, 0.06), c["clapper"])  # lags the swing
    f.paint(_ellipse(x, y, 0, -0.48, 0.17 * width, 0.1), shading)
    f.paint(body, shading)
    f.paint(_ellipse(x, y, 0, 0.3, 0.44 * width, 0.06), _mix(c["shade"], c["bell"], 0.5 - x))
    f.paint(_ellipse(x, y, -0.13 * width, -0.08, 0.03, 0.26, angle=-0.12), c["shine"], 0.6)


def _bird_backdrop(f: _Frame, p: dict) -> None:
    c = p["colours"]
    for cx, cy, rx, ry, angle, light in p["leaves"]:
        colour = c["leaf_dark"] + light * (c["leaf_light"] - c["leaf_dark"])
        f.paint(_ellipse(f.gx, f.gy, cx, cy, rx, ry, angle), colour, grid=True)
    x, y, slope = f.x * p["facing"], f.y, p["branch_slope"]
    f.paint(_segment(x, y, -1.6, 0.3 - 1.6 * slope, 1.6, 0.3 + 1.6 * slope, 0.035), c["branch"])


def _bird_moving(f: _Frame, p: dict, t: float) -> None:
    c = p["colours"]
    step = 0.15 * math.sin(2 * math.pi * p["walk_rate"] * t + p["walk_phase"])  # it sidles along the branch
    x, y = f.x * p["facing"] - step, f.y - step * p["branch_slope"]  # some birds look left
    for foot in (-0.05, 0.06):
        f.paint(_segment(x, y, foot, 0.1, foot + 0.02, 0.3 + foot * p["branch_slope"], 0.012), c["bird"])
    f.paint(_box(x, y, -0.31, 0.08, 0.14, 0.04, angle=0.45), c["bird"])  # tail
    f.paint(_ellipse(x, y, 0, 0, 0.26, 0.15, angle=-0.25), c["bird"])
    f.paint(_circle(x, y, 0.25, -0.15, 0.1), c["bird"])
    f.paint(_ellipse(x, y, 0.37, -0.14, 0.07, 0.022, angle=0.1), c["beak"])
    f.paint(_circle(x, y, 0.28, -0.18, 0.02), c["eye"])
    flap = -0.3 - 0.6 * (0.5 + 0.5 * math.sin(2 * math.pi * p["flap_rate"] * t + p["flap_phase"]))
    wx, wy = _rotate(x - 0.05, y + 0.06, -flap)
    f.paint(_ellipse(wx, wy, -0.14, 0, 0.2, 0.06), c["bird"] + 28)


def _nothing(f: _Frame, p: dict) -> None:
    """The backdrop of a scene that moves as a whole: the background alone."""


def _engine_moving(f: _Frame, p: dict, t: float) -> None:
    c = p["colours"]
    shake = p["shake"]  # the whole engine trembles
    x = f.x + shake * math.sin(2 * math.pi * p["shake_rate"] * t)
    y = f.y + shake * math.sin(2 * math.pi * p["shake_rate"] * 1.3 * t + 1.0)
    f.paint(_ellipse(x, y, 0, 0.43, 0.6, 0.05), c["shadow"], 0.6)
    f.paint(_segment(x, y, 0.42, 0.0, 0.78, -0.4, 0.05), c["pipe"])  # exhaust
    f.paint(_box(x, y, 0, 0.12, 0.42, 0.26, radius=0.04), _mix(c["block"], c["block_dark"], (y + 0.1) * 2))
    cylinders = p["cylinders"]
    pitch = 0.76 / cylinders
    for k in range(cylinders):
        cx = -0.38 + pitch * (k + 0.5)
        f.paint(_box(x, y, cx, -0.2, pitch / 2 - 0.015, 0.07, radius=0.015), c["head"])
        f.paint(_circle(x, y, cx, -0.2, 0.02), c["shadow"])
    # The pulley and its belt: the spokes turn, the clearest motion between frames.
    f.paint(_segment(x, y, -0.55, -0.01, -0.3, -0.06, 0.015), c["pulley"])
    f.paint(_segment(x, y, -0.55, 0.31, -0.3, 0.3, 0.015), c["pulley"])
    f.paint(np.abs(_circle(x, y, -0.55, 0.15, 0.14)) - 0.03, c["pulley"])
    for k in range(3):
        angle = p["spin"] * t + k * 2 * math.pi / 3
        f.paint(_segment(x, y, -0.55, 0.15, -0.55 + 0.13 * math.cos(angle), 0.15 + 0.13 * math.sin(angle), 0.018),
                c["pulley"])


def _zigzag(x: np.ndarray, step: float) -> np.ndarray:
    """A triangle wave in [-1, 1] of period `step` (the drum's lacing)."""
    return 2 * np.abs(2 * ((x / step) % 1.0) - 1) - 1


def _drum_backdrop(f: _Frame, p: dict) -> None:
    c = p["colours"]
    f.glow(0.5 * np.exp(-(_length(f.gx - p["spot_x"], f.gy + 0.1) / 0.8) ** 2), c["spot"])
    x, y, aspect = f.x, f.y, p["aspect"]
    f.paint(_ellipse(x, y, 0, 0.37, 0.42, 0.42 * aspect), c["shell"])
    f.paint(_box(x, y, 0, 0.15, 0.42, 0.22), _mix(c["shell"], c["shell"] * 0.7, (np.abs(x) - 0.2) * 4))
    lace = np.maximum(np.abs(y - 0.15 - 0.16 * _zigzag(x + 0.42, 0.14)) - 0.008, np.abs(x) - 0.42)
    f.paint(lace, c["lace"])
    f.paint(np.maximum(np.abs(y - 0.35) - 0.025, np.abs(x) - 0.43), c["hoop"])
    f.paint(_ellipse(x, y, 0, -0.07, 0.44, 0.44 * aspect + 0.02), c["hoop"])


def _drum_moving(f: _Frame, p: dict, t: float) -> None:
    c = p["colours"]
    x, y = f.x, f.y
    lifts = [abs(math.sin(math.pi * p["hit_rate"] * t + phase)) for phase in p["hit_phases"]]
    flash = 1.0 - min(lifts)  # the head brightens as a stick lands
    f.paint(_ellipse(x, y, 0, -0.07, 0.42, 0.42 * p["aspect"]), np.minimum(c["head"] + 15 * flash, 255))
    for side, lift in zip((-1, 1), lifts):
        tip_x, tip_y = 0.14 * side, -0.1 - 0.25 * lift
        f.paint(_segment(x, y, 0.62 * side, -0.7 - 0.1 * lift, tip_x, tip_y, 0.022), c["stick"])
        f.paint(_circle(x, y, tip_x, tip_y, 0.035), c["stick"])


def _siren_backdrop(f: _Frame, p: dict) -> None:
    for cx, cy in p["streetlights"]:
        f.glow(0.5 * np.exp(-(_length(f.gx - cx, f.gy - cy) / 0.05) ** 2), p["colours"]["street"])
    f.paint(_box(f.x, f.y, 0, 0.62, 0.95, 0.32, radius=0.15), p["colours"]["roof"])


def _siren_moving(f: _Frame, p: dict, t: float) -> None:
    c = p["colours"]
    x, y = f.x, f.y
    red = 0.5 + 0.5 * math.cos(2 * math.pi * p["flash_rate"] * t + p["flash_phase"])  # red and blue alternate
    for cx, on, bright, dim in ((-0.32, red, c["red"], c["dim_red"]), (0.32, 1 - red, c["blue"], c["dim_blue"])):
        f.glow(0.85 * on * np.exp(-(_length(x - cx, y - 0.1) / p["glow"]) ** 2), bright)
        f.paint(_ellipse(x, y, cx, 0.12, 0.24, 0.17), dim + on * (bright - dim))
    f.paint(_box(x, y, 0, 0.23, 0.62, 0.07, radius=0.03), c["bar"])


def _spiral(x: np.ndarray, y: np.ndarray, apart: float, spin: float) -> np.ndarray:
    """Distance to the nearest arm of an Archimedean spiral whose arms are `apart` apart."""
    angle = (np.arctan2(y, x) + spin) % (2 * math.pi)
    arms = _length(x, y) / apart - angle / (2 * math.pi)
    return np.abs(arms - np.round(arms)) * apart


def _wind_moving(f: _Frame, p: dict, t: float) -> None:
    c = p["colours"]
    for y0, amplitude, frequency, phase, speed in p["streams"]:  # streamlines drifting sideways
        curve = y0 + amplitude * np.sin(math.pi * frequency * f.gx + (phase - speed * t))
        f.paint(np.abs(f.gy - curve) - 0.014, c["stream"], 0.8, grid=True)
    for cx, cy, radius, spin in p["swirls"]:
        fade = np.clip(1.2 - _length(f.x - cx, f.y - cy) / radius, 0, 1)
        f.paint(_spiral(f.x - cx, f.y - cy, radius / 3, spin * t) - 0.02, c["swirl"], fade)
    for x0, y0, speed, phase in p["leaves"]:  # leaves blown across the frame
        lx = (x0 + speed * t + 1.2) % 2.4 - 1.2
        ly = y0 + 0.05 * math.sin(3 * t + phase)
        f.paint(_ellipse(f.gx, f.gy, lx, ly, 0.045, 0.02, angle=2 * t + phase), c["leaf"], grid=True)


def _hand(x: np.ndarray, y: np.ndarray, angle: float, length: float, width: float) -> np.ndarray:
    """A clock hand from the centre; `angle` clockwise from 12 o'clock."""
    return _segment(x, y, 0, 0, length * math.sin(angle), -length * math.cos(angle), width)


def _clock_backdrop(f: _Frame, p: dict) -> None:
    c = p["colours"]
    for row in p["grain"]:  # wood grain of the wall
        f.paint(np.abs(f.gy - row - 0.01 * np.sin(7 * f.gx + row * 9)) - 0.004, c["grain"], 0.6, grid=True)
    x, y, radius = f.x, f.y, p["radius"]
    f.paint(_circle(x, y, 0.05, 0.06, radius + 0.06), c["shadow"], 0.4)
    f.paint(_circle(x, y, 0, 0, radius + 0.06), c["rim"])
    f.paint(_circle(x, y, 0, 0, radius), c["face"])
    # Hour marks, the quarters longer: the angular distance to the nearest mark, times the radius.
    angle = np.arctan2(x, -y)
    nearest = np.round(angle / (math.pi / 6))
    r = _length(x, y)
    sideways = np.abs(angle - nearest * math.pi / 6) * r
    inner = np.where(nearest % 3 == 0, 0.72, 0.82) * radius
    f.paint(np.maximum(sideways - 0.012, np.maximum(inner - r, r - 0.93 * radius)), c["marks"])
    f.paint(_hand(x, y, p["hour"], 0.5 * radius, 0.035), c["marks"])
    f.paint(_hand(x, y, p["minute"], 0.8 * radius, 0.024), c["marks"])


def _clock_moving(f: _Frame, p: dict, t: float) -> None:
    second = 2 * math.pi * math.floor(p["second"] + t / p["tick"]) / 60  # the hand jumps once per tick
    f.paint(_hand(f.x, f.y, second, 0.88 * p["radius"], 0.01), p["colours"]["second"])
    f.paint(_circle(f.x, f.y, 0, 0, 0.035), p["colours"]["second"])


_SCENES: dict[str, tuple[Callable[[_Frame, dict], None], Callable[[_Frame, dict, float], None]]] = {
    "rain": (_rain_backdrop, _rain_moving), "bell": (_bell_backdrop, _bell_moving),
    "bird": (_bird_backdrop, _bird_moving), "engine": (_nothing, _engine_moving),
    "drum": (_drum_backdrop, _drum_moving), "siren": (_siren_backdrop, _siren_moving),
    "wind": (_nothing, _wind_moving), "clock": (_clock_backdrop, _clock_moving),
}


def _class_params(label: str, rng: np.random.Generator) -> dict:
    """The class-specific random choices of one clip's scene (the layout of its décor and its motion).

    Periodic motions (flaps, flashes, hits, spokes) avoid whole cycles per second: `preprocess`
    samples about one frame a second, and a whole number of cycles would freeze the picture."""
    u = rng.uniform
    if label == "rain":
        return dict(clouds=[(u(-1, 1), u(-1.05, -0.7), u(0.3, 0.6), u(0.12, 0.22)) for _ in range(5)],
                    ground_y=u(0.6, 0.75), slant=u(0.2, 0.5), spacing=u(0.05, 0.08), period=u(0.35, 0.6),
                    length=u(0.08, 0.18), speed=u(1.2, 2.2), width=u(0.006, 0.011),
                    phases=u(0, 1, 80), offsets=u(-0.3, 0.3, 80),
                    ripples=[(u(-0.7, 0.7), u(0.78, 0.92), u(0, 1)) for _ in range(3)])
    if label == "bell":
        return dict(spots=[(u(-1, 1), u(-1, 1), u(0.1, 0.3)) for _ in range(5)], swing=u(0.08, 0.3),
                    swing_rate=u(0.4, 0.9), swing_phase=u(0, 2 * math.pi), width=u(0.9, 1.1))
    if label == "bird":
        return dict(leaves=[(u(-1.1, 1.1), u(-1.1, 1.1), u(0.08, 0.2), u(0.04, 0.1), u(0, math.pi), u(0, 1))
                            for _ in range(14)],
                    facing=1.0 if rng.random() < 0.5 else -1.0, branch_slope=u(-0.15, 0.15),
                    flap_rate=u(1.2, 1.8), flap_phase=u(0, 2 * math.pi), walk_rate=u(0.1, 0.3),
                    walk_phase=u(0, 2 * math.pi))
    if label == "engine":
        return dict(shake=u(0.006, 0.015), shake_rate=u(7, 13), spin=u(2.3, 3.8), cylinders=int(rng.integers(3, 5)))
    if label == "drum":
        return dict(spot_x=u(-0.5, 0.5), aspect=u(0.25, 0.35), hit_rate=u(1.2, 1.8), hit_phases=u(0, math.pi, 2))
    if label == "siren":
        return dict(streetlights=[(u(-1, 1), u(-1, -0.2)) for _ in range(6)], flash_rate=u(1.2, 1.8),
                    flash_phase=u(0, 2 * math.pi), glow=u(0.35, 0.55))
    if label == "wind":
        return dict(streams=[(u(-0.9, 0.9), u(0.03, 0.1), u(1, 3), u(0, 2 * math.pi), u(1, 3)) for _ in range(5)],
                    swirls=[(u(-0.6, 0.6), u(-0.6, 0.6), u(0.25, 0.45), u(0.5, 1.5))
                            for _ in range(int(rng.integers(2, 4)))],
                    leaves=[(u(-1.2, 1.2), u(-0.8, 0.8), u(0.4, 0.9), u(0, 2 * math.pi)) for _ in range(4)])
    return dict(grain=u(-1, 1, 12), radius=u(0.55, 0.68), hour=u(0, 2 * math.pi), minute=u(0, 2 * math.pi),
                second=u(0, 60), tick=u(0.5, 1.0))


def scene_params(label: str, rng: np.random.Generator) -> dict:
    """One clip's picture parameters: jittered placement, colour shades, background texture and
    the class's own choices. Pure data; `render_frame` turns it into frames at any time and size."""
    _class_index(label)
    shade = rng.uniform(0.85, 1.15)  # one brightness for the whole clip, then a tint per colour
    colours = {name: np.clip(np.asarray(base, dtype=np.float32) * shade + rng.normal(0, 10, 3), 0, 255)
               for name, base in _PALETTES[label].items()}
    return dict(label=label, dx=rng.uniform(-0.15, 0.15), dy=rng.uniform(-0.12, 0.12), scale=rng.uniform(0.8, 1.15),
                angle=rng.uniform(-0.2, 0.2), colours=colours,
                texture=rng.standard_normal((12, 12)).astype(np.float32) * rng.uniform(4, 12),
                **_class_params(label, rng))


def _frame(image: np.ndarray, params: dict, size: int) -> _Frame:
    """A canvas over `image` [3, H, W] with the clip's placement (shift, rotation, scale) applied."""
    gx, gy = _grid(size)
    x, y = _rotate(gx - params["dx"], gy - params["dy"], -params["angle"])
    scale = params["scale"]
    return _Frame(image, gx, gy, x / scale, y / scale, 2.0 / size / scale, 2.0 / size)


def _backdrop(params: dict, size: int) -> np.ndarray:
    """What never moves in the clip: gradient, grey grain and the class's static décor, float32 [3, H, W]."""
    gx, gy = _grid(size)
    colours = params["colours"]
    image = _mix(colours["top"], colours["bottom"], (gy + 1) / 2)
    upsample = _upsampler(params["texture"].shape[0], size)
    image += upsample @ params["texture"] @ upsample.T  # the same grain in every plane
    _SCENES[params["label"]][0](_frame(image, params, size), params)
    return image


def _moving(params: dict, backdrop: np.ndarray, t: float) -> np.ndarray:
    frame = _frame(backdrop.copy(), params, backdrop.shape[-1])
    _SCENES[params["label"]][1](frame, params, float(t))
    pixels = np.clip(frame.image + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(1, 2, 0))  # [3, H, W] -> [H, W, 3]


def render_frame(label: str, params: dict, t: float, size: int = SIZE) -> np.ndarray:
    """The clip's picture at time `t` seconds: RGB uint8 [size, size, 3]."""
    _class_index(label)
    if params.get("label") != label:
        raise ClipsonicError(f"scene parameters are for {params.get('label')!r}, not {label!r}")
    return _moving(params, _backdrop(params, size), t)


def class_picture(label: str, seed: int = 0, size: int = SIZE) -> np.ndarray:
    """A picture of `label` (RGB uint8 [size, size, 3]) from a random stream no clip uses: an
    unseen but typical image query."""
    return render_frame(label, scene_params(label, clip_rng(seed, label, 0, _PICTURE_STREAM)), 0.5, size)


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
    frames = max(1, round(clip_rng(seed, label, index, _DURATION_STREAM).uniform(low, high) * fps))
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
    rng = clip_rng(spec.seed, spec.label, spec.index, _AUDIO_STREAM)
    return synthesize_audio(spec.label, rng, spec.seconds, sample_rate)


def clip_frames(spec: ClipSpec, fps: int = FPS, size: int = SIZE) -> np.ndarray:
    """The clip's picture track, uint8 [round(seconds * fps), size, size, 3]."""
    params = scene_params(spec.label, clip_rng(spec.seed, spec.label, spec.index, _SCENE_STREAM))
    backdrop = _backdrop(params, size)  # drawn once; each frame paints its moving parts on a copy
    return np.stack([_moving(params, backdrop, i / fps) for i in range(round(spec.seconds * fps))])


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
        try:
            pixels = np.ascontiguousarray(frames).tobytes()  # rgb24 frames, one after another
            done = subprocess.run(command, input=pixels, capture_output=True, check=False)
        except OSError as error:
            raise MediaError(f"{out}: cannot run ffmpeg ({error.strerror})") from None
    message = done.stderr.decode("utf-8", errors="replace").strip()
    if done.returncode != 0:
        reason = _last_reason(message, out) or f"ffmpeg exit status {done.returncode}"
        raise MediaError(f"{out}: ffmpeg could not write the video ({reason})")


def write_clip(spec: ClipSpec, path: str | os.PathLike, fps: int = FPS, size: int = SIZE,
               sample_rate: int = SAMPLE_RATE) -> Path:
    """Synthesize `spec` and write it as an MP4 at `path`, atomically (never a partial file there)."""
    if size < 16 or size % 2:
        raise ClipsonicError(f"video size must be even and at least 16 pixels (H.264 4:2:0), got {size}")
    target = Path(path)
    frames, audio = clip_frames(spec, fps, size), clip_audio(spec, sample_rate)
    try:
        with atomic_path(target) as tmp:
            _encode(frames, audio, tmp, fps, sample_rate)
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
