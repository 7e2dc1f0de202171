"""The sound tracks: one procedural synthesizer per class (`synthesize_audio`).

Pitch, tempo, loudness and noise floor vary with the clip's random stream; the peak level is
drawn too, so level is no clue to the class. Peaks stay at most PEAK_RANGE[1] (-4.4 dBFS): the
AAC encoder of the videos overshoots a tonal sound's peak by up to 1.5x (3.7 dB, measured on
sirens), and `write_clip` checks the decoded track stays under full scale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from clipsonic.demo.synthetic.streams import class_index
from clipsonic.errors import ClipsonicError

SAMPLE_RATE = 16000
PEAK_RANGE = (0.2, 0.6)  # the clip's peak, drawn uniformly (a 9.5 dB spread)


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


def _thunder_audio(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Claps of thunder: a bright crack, then a deep rumble of low noise that rolls for seconds,
    swelling unevenly, over faint rain."""
    out = 0.02 * _band_noise(rng, n, sr, 500, 6000)
    onset = rng.uniform(0.0, 0.8)
    while onset < n / sr:
        length = int(rng.uniform(2.0, 4.0) * sr)
        t = _times(length, sr)
        roll = np.exp(-t / rng.uniform(0.8, 1.6)) * (0.4 + 0.6 * _slow_curve(rng, length, sr, rng.uniform(3, 6)))
        rumble = _band_noise(rng, length, sr, 25, rng.uniform(150, 300), order=3) * roll
        crack = _band_noise(rng, length, sr, 300, 4000) * np.exp(-t / rng.uniform(0.03, 0.08))
        _add(out, int(onset * sr), rng.uniform(0.7, 1.0) * (rumble + 0.5 * crack))
        onset += rng.uniform(2.5, 5.0)
    return out


def _dog_audio(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Barks in ones, twos and threes: short harmonic yelps (400-800 Hz, falling pitch) with a
    breathy noise part, under a nasal formant."""
    out = 0.01 * _band_noise(rng, n, sr, 200, 4000)
    pitch = rng.uniform(400, 800)
    time = rng.uniform(0.0, 0.5)
    while time < n / sr:
        for _ in range(rng.integers(1, 4)):
            length = rng.uniform(0.1, 0.2)
            t = _times(int(length * sr), sr)
            freq = pitch * rng.uniform(0.9, 1.1) * (1.15 - 0.3 * t / length)
            envelope = np.sin(np.pi * np.minimum(t / length, 1.0)) ** 0.6 * np.exp(-t / length)
            voiced = _tone(sr, freq, (1.0, 0.8, 0.6, 0.45, 0.3, 0.2, 0.12))
            breath = _band_noise(rng, t.size, sr, 800, 5000)
            _add(out, int(time * sr), rng.uniform(0.7, 1.0) * envelope * (voiced + 0.5 * breath))
            time += length + rng.uniform(0.08, 0.18)
        time += rng.uniform(0.5, 1.5)
    return out


def _footsteps_audio(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Walking on gravel: a step every 0.4-0.7 s, each a dull heel thud and a gritty crunch of
    many tiny grains."""
    interval = rng.uniform(0.4, 0.7)
    out = 0.01 * _band_noise(rng, n, sr, 100, 3000)
    onset = rng.uniform(0.0, interval)
    while onset < n / sr:
        length = int(0.25 * sr)
        t = _times(length, sr)
        thud = _band_noise(rng, length, sr, 60, 300) * np.exp(-t / 0.03)
        grains = rng.random(length) < 0.08 * np.exp(-t / 0.06)
        crunch = np.fft.irfft(np.fft.rfft(grains * rng.standard_normal(length)) *
                              (np.fft.rfftfreq(length, 1 / sr) > 1500), length)
        crunch /= np.abs(crunch).max() + 1e-12
        _add(out, int(onset * sr), rng.uniform(0.7, 1.0) * (thud + 0.6 * crunch))
        onset += interval * rng.uniform(0.95, 1.05)
    return out


def _stream_audio(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A babbling brook: a steady wash of mid noise and many small bubbles, short sines whose
    pitch rises as they burst (300-1800 Hz)."""
    out = 0.35 * _band_noise(rng, n, sr, 300, 3000) * (0.8 + 0.2 * _slow_curve(rng, n, sr, 2.0))
    count = rng.poisson(rng.uniform(40, 80) * n / sr)
    for onset, freq in zip(rng.integers(0, n, count), rng.uniform(300, 1800, count)):
        tau = rng.uniform(0.01, 0.03)
        _add(out, int(onset), rng.uniform(0.2, 0.6) * _ping(sr, freq, tau, glide=freq * rng.uniform(5, 15)))
    return out


def _fire_audio(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A log fire: a low soft roar, irregular sharp crackles (broadband clicks in bursts) and the
    occasional louder pop."""
    out = 0.25 * _band_noise(rng, n, sr, 40, 400) * (0.6 + 0.4 * _slow_curve(rng, n, sr, 1.5))
    count = rng.poisson(rng.uniform(8, 20) * n / sr)
    for onset in rng.integers(0, n, count):
        size = rng.integers(1, 6)  # crackles come in little bursts
        for k in range(size):
            length = int(rng.uniform(0.001, 0.004) * sr) + 2
            click = _band_noise(rng, length + 32, sr, 1000, 7000)[:length] * np.exp(-np.arange(length) / (length / 3))
            _add(out, int(onset + k * rng.uniform(0.005, 0.03) * sr), rng.uniform(0.3, 1.0) * click)
    return out


def _phone_audio(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A ringing telephone: bursts of a fast trill between two tones (about 20 Hz), 0.3-0.5 s on
    and 0.15-0.3 s off, as a mobile ring. (A desk phone's pause of about 2 s after its double ring
    left one in three of the UNet's 1-s training crops without any ring, and its generated phones
    were recognised in 4-6 of 16 samples, 4-5 dB too quiet; BENCHMARKS.md, *the phone's ring*.)"""
    low = rng.uniform(700, 1000)
    high = low * rng.uniform(1.2, 1.35)
    trill = rng.uniform(16, 24)
    t = _times(n, sr)
    freq = np.where(np.sin(2 * np.pi * trill * t) >= 0, high, low)
    tone = _tone(sr, freq, (1.0, 0.3, 0.15))
    on, off = rng.uniform(0.3, 0.5), rng.uniform(0.15, 0.3)
    gate = (((t + rng.uniform(0, on + off)) % (on + off)) < on).astype(np.float64)
    gate = np.convolve(gate, np.ones(80) / 80, mode="same")  # 5-ms edges, no clicks
    return tone * gate + 0.005 * _band_noise(rng, n, sr, 100, 4000)


def _horn_audio(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Car horns: two buzzy tones a third apart (350-500 Hz, rich in odd harmonics) in honks of
    0.2-1 s, with street noise under them."""
    base = rng.uniform(350, 500)
    out = 0.04 * _band_noise(rng, n, sr, 50, 2000)
    time = rng.uniform(0.0, 0.6)
    while time < n / sr:
        length = int(rng.uniform(0.2, 1.0) * sr)
        t = _times(length, sr)
        buzz = sum(_tone(sr, np.full(length, base * ratio), (1.0, 0.1, 0.5, 0.1, 0.3, 0.05, 0.2, 0.03, 0.1))
                   for ratio in (1.0, 1.26))
        envelope = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)
        _add(out, int(time * sr), rng.uniform(0.8, 1.0) * envelope * buzz)
        time += length / sr + rng.uniform(0.15, 1.2)
    return out


def _whistle_audio(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A referee's whistle: blasts of a piercing tone (2.2-3.5 kHz) warbled by the pea inside
    (30-50 Hz amplitude and pitch trill), with breath noise."""
    out = 0.01 * _band_noise(rng, n, sr, 200, 5000)
    pitch, warble = rng.uniform(2200, 3500), rng.uniform(30, 50)
    time = rng.uniform(0.0, 0.5)
    while time < n / sr:
        length = int(rng.uniform(0.25, 1.2) * sr)
        t = _times(length, sr)
        trill = np.sin(2 * np.pi * warble * t)
        tone = _tone(sr, pitch * (1 + 0.02 * trill), (1.0, 0.08))
        envelope = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02) * (0.75 + 0.25 * trill)
        breath = _band_noise(rng, length, sr, 1500, 6000)
        _add(out, int(time * sr), rng.uniform(0.8, 1.0) * envelope * (tone + 0.08 * breath))
        time += length / sr + rng.uniform(0.3, 1.2)
    return out


_SYNTHS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "rain": _rain_audio, "bell": _bell_audio, "bird": _bird_audio, "engine": _engine_audio,
    "drum": _drum_audio, "siren": _siren_audio, "wind": _wind_audio, "clock": _clock_audio,
    "thunder": _thunder_audio, "dog": _dog_audio, "footsteps": _footsteps_audio, "stream": _stream_audio,
    "fire": _fire_audio, "phone": _phone_audio, "horn": _horn_audio, "whistle": _whistle_audio,
}


def synthesize_audio(label: str, rng: np.random.Generator, seconds: float,
                     sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 [round(seconds * sample_rate)] of class `label`, peak within PEAK_RANGE.

    The peak level (loudness) and a white noise floor 50-60 dB below it vary with `rng`, so
    level is no clue to the class.
    """
    class_index(label)
    if seconds <= 0 or sample_rate < 8000:
        raise ClipsonicError(f"cannot synthesize {seconds} s at {sample_rate} Hz (needs > 0 s and >= 8000 Hz)")
    n = max(int(round(seconds * sample_rate)), 16)
    wav = _SYNTHS[label](rng, n, sample_rate)
    peak = rng.uniform(*PEAK_RANGE)
    wav *= peak / (np.abs(wav).max() + 1e-12)
    wav += 10 ** (rng.uniform(-60, -50) / 20) * peak * rng.standard_normal(n)  # 50-60 dB under the peak
    wav *= peak / np.abs(wav).max()  # the noise floor must not lift the peak past the range
    return wav.astype(np.float32)


