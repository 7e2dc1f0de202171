"""Audio in and out, the log-mel front end, and Griffin-Lim inversion.

The log-mel spectrogram is BigVGAN's ``meldataset.mel_spectrogram`` (NVIDIA/BigVGAN, MIT),
re-derived: reflect-pad ``(n_fft - hop) / 2`` on each side, ``stft(center=False)`` with a
periodic Hann window, magnitude ``sqrt(re^2 + im^2 + 1e-9)``, Slaney mel filterbank
(`clipsonic.melfilters`), ``log(clamp(x, min=1e-5))``. A waveform of T samples gives
``T // hop`` frames. Differences: the window is built in float64 before the cast, and there is
no printed warning for samples outside [-1, 1].

Griffin-Lim (the weight-free vocoder) uses the same framing, so its output has exactly
``frames * hop`` samples and re-analyses to the same frame grid.
"""

from __future__ import annotations

import dataclasses
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from clipsonic.config import Config
from clipsonic.errors import MediaError
from clipsonic.fileio import atomic_path
from clipsonic.melfilters import mel_filterbank
from clipsonic.resample import resample

LOG_FLOOR = 1e-5
MAGNITUDE_EPS = 1e-9
PEAK_CEILING_DBFS = -1.0  # where a sample that would clip is scaled to (1 dB below full scale)
PEAK_LIMIT = 10 ** (PEAK_CEILING_DBFS / 20)  # the peak Griffin-Lim's phases keep within (linear)


@dataclasses.dataclass(frozen=True)
class MelConfig(Config):
    """STFT and mel settings; the defaults are the paper's (16 kHz, 64 mels, hop 512)."""

    sample_rate: int = 16000
    n_fft: int = 2048
    win_size: int = 2048
    hop_size: int = 512
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float | None = 8000.0

    PRESETS = {"paper": {}}

    def __post_init__(self) -> None:
        if self.win_size > self.n_fft:
            raise ValueError(f"win_size {self.win_size} exceeds n_fft {self.n_fft}")
        if (self.n_fft - self.hop_size) % 2:
            raise ValueError("n_fft - hop_size must be even (it is split between both sides)")

    @property
    def padding(self) -> int:
        return (self.n_fft - self.hop_size) // 2


PAPER_MEL = MelConfig()


def _hann_window(size: int, device: torch.device) -> torch.Tensor:
    # Periodic Hann, built in float64 and cast: torch's float32 window has been seen to differ
    # by ~1e-4 in the first op of a fresh process on this project's CPU.
    n = torch.arange(size, dtype=torch.float64)
    return (0.5 - 0.5 * torch.cos(2 * math.pi * n / size)).to(device=device, dtype=torch.float32)


def _framed_window(config: MelConfig, device: torch.device) -> torch.Tensor:
    """The window zero-padded (centred) to n_fft, as torch.stft places a shorter window."""
    window = _hann_window(config.win_size, device)
    left = (config.n_fft - config.win_size) // 2
    return torch.nn.functional.pad(window, (left, config.n_fft - config.win_size - left))


def stft(wav: torch.Tensor, config: MelConfig = PAPER_MEL) -> torch.Tensor:
    """Complex STFT [B, n_fft//2 + 1, T // hop] of `wav` [B, T] with BigVGAN's framing."""
    if wav.shape[-1] <= config.padding:
        raise ValueError(f"waveform of {wav.shape[-1]} samples is too short for the STFT: "
                         f"it needs more than {config.padding} (reflect padding)")
    padded = torch.nn.functional.pad(wav[:, None, :], (config.padding, config.padding), mode="reflect")[:, 0]
    return torch.stft(padded, config.n_fft, hop_length=config.hop_size, win_length=config.n_fft,
                      window=_framed_window(config, wav.device), center=False, normalized=False,
                      onesided=True, return_complex=True)


def _overlap_add(frames: torch.Tensor, hop: int) -> torch.Tensor:
    """Sum frames [B, n_fft, F] placed `hop` apart -> [B, (F - 1) * hop + n_fft]."""
    batch, size, count = frames.shape
    if size % hop:
        fold = dict(output_size=(1, (count - 1) * hop + size), kernel_size=(1, size), stride=(1, hop))
        return torch.nn.functional.fold(frames, **fold)[:, 0, 0]
    # With n_fft a multiple of hop, chunk k of frame f lands on output block f + k: a few shifted adds.
    ratio = size // hop
    chunks = frames.view(batch, ratio, hop, count)
    blocks = frames.new_zeros(batch, hop, count + ratio - 1)
    for k in range(ratio):
        blocks[:, :, k:k + count] += chunks[:, k]
    return blocks.transpose(1, 2).reshape(batch, -1)  # block-major: consecutive hops


@lru_cache(maxsize=8)
def _window_envelope(config: MelConfig, count: int, device: torch.device) -> torch.Tensor:
    """Sum of squared windows at every output sample of `count` overlapped frames (cached:
    Griffin-Lim needs the same one every iteration)."""
    window = _framed_window(config, device)
    return _overlap_add((window**2)[None, :, None].expand(1, -1, count), config.hop_size)[0]


def istft(spec: torch.Tensor, config: MelConfig = PAPER_MEL) -> torch.Tensor:
    """Inverse of `stft` by weighted overlap-add -> [B, frames * hop]."""
    window = _framed_window(config, spec.device)
    frames = torch.fft.irfft(spec, n=config.n_fft, dim=1) * window[None, :, None]  # [B, n_fft, F]
    count = spec.shape[-1]
    signal = _overlap_add(frames, config.hop_size) / _window_envelope(config, count, spec.device).clamp(min=1e-8)
    return signal[:, config.padding:config.padding + count * config.hop_size]


def mel_basis(config: MelConfig = PAPER_MEL, device: torch.device | str = "cpu") -> torch.Tensor:
    """The mel filterbank [n_mels, n_fft//2 + 1] as float32 on `device`."""
    bank = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax)
    return torch.from_numpy(np.array(bank, dtype=np.float32)).to(device)


def mel_spectrogram(wav: torch.Tensor, config: MelConfig = PAPER_MEL) -> torch.Tensor:
    """Log-mel spectrogram: `wav` [B, T] (or [T]) -> [B, n_mels, T // hop] (or [n_mels, T // hop]).

    Computed in float32 whatever the input dtype.
    """
    squeeze = wav.dim() == 1
    batch = wav.reshape(1, -1) if squeeze else wav
    if batch.dim() != 2:
        raise ValueError(f"mel_spectrogram expects [T] or [B, T], got shape {tuple(wav.shape)}")
    spec = stft(batch.float(), config)
    magnitude = torch.sqrt(spec.real.square() + spec.imag.square() + MAGNITUDE_EPS)
    mel = torch.matmul(mel_basis(config, batch.device), magnitude)
    log_mel = torch.log(torch.clamp(mel, min=LOG_FLOOR))
    return log_mel[0] if squeeze else log_mel


def _fit_to_mel(target: torch.Tensor, basis: torch.Tensor, iterations: int) -> torch.Tensor:
    """Non-negative least squares for ``basis @ linear == target`` by multiplicative updates,
    started from the transposed filterbank."""
    gram = basis.T @ basis
    projected = basis.T @ target
    linear = projected.clamp(min=MAGNITUDE_EPS)
    for _ in range(iterations):
        linear = linear * projected / (gram @ linear).clamp(min=MAGNITUDE_EPS)
    return linear


def mel_to_linear(log_mel: torch.Tensor, config: MelConfig = PAPER_MEL, iterations: int = 32) -> torch.Tensor:
    """Non-negative linear magnitudes [B, n_fft//2 + 1, F] whose mel projection fits `log_mel`.

    Multiplicative non-negative least-squares updates, started from the transposed filterbank.
    """
    return _fit_to_mel(torch.exp(log_mel.float()), mel_basis(config, log_mel.device), iterations)


def griffin_lim(log_mel: torch.Tensor, config: MelConfig = PAPER_MEL, iterations: int = 64,
                momentum: float = 0.99, seed: int = 0, refit: bool = True,
                peak_limit: float | None = PEAK_LIMIT) -> torch.Tensor:
    """Waveform [B, F * hop] from a log-mel [B, n_mels, F] (or [n_mels, F] -> [F * hop]).

    Fast Griffin-Lim (Perraudin et al., 2013): the projection onto consistent spectrograms is
    extrapolated with `momentum`; phases start random from `seed`, so output is reproducible.
    The magnitudes are not held at one inversion of the mel: a mel band sums the magnitudes of
    many STFT bins, so it does not say how a partial's energy is spread among them, and a fixed
    inversion spreads it evenly; that spectrogram has no consistent phases, the overlap-add
    cancels part of it, and tonal sounds came out up to 3 dB quiet (BENCHMARKS.md, *mel-consistent
    Griffin-Lim*). So every iteration refits the rebuilt spectrogram's own magnitudes to the mel,
    keeping the shape within each band that consistency gives them (``refit=False``: the
    classic algorithm, magnitudes fixed at `mel_to_linear`'s, kept for comparison).

    A mel does not say either how a partial's energy is placed in time within a 128-ms window: a
    20-Hz trill between two tones and the two tones at once have nearly the same mel, and the
    phases found for the second peak up to 2.3 times higher. So the phases are searched among
    waveforms within `peak_limit` (every iterate is clipped to it before it is analysed again,
    as clipping-and-filtering reduces the crest factor of a multicarrier signal): where the
    unconstrained search would exceed it, the same mel is reached with lower peaks, and where no
    iterate reaches it, nothing changes. The level is kept (the refit restores the mel); the output is
    the last consistent waveform, not a clipped one (BENCHMARKS.md, *peak-limited Griffin-Lim*).
    ``peak_limit=None``: unconstrained.
    """
    squeeze = log_mel.dim() == 2
    batch = log_mel[None] if squeeze else log_mel
    target = torch.exp(batch.float())
    basis = mel_basis(config, batch.device)
    magnitude = _fit_to_mel(target, basis, iterations=32)  # as mel_to_linear
    # The refit: each bin moves by the filterbank-weighted mean, over the bands it feeds, of the
    # target mel's ratio to the rebuilt one (one Richardson-Lucy step), so a band's sum moves onto
    # the target and the shape within it is kept.
    spread = basis.T / basis.sum(dim=0)[:, None].clamp(min=MAGNITUDE_EPS)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=generator).to(magnitude.device) * 2 * math.pi
    angles = torch.polar(torch.ones_like(magnitude), phase)
    previous = torch.zeros_like(angles)
    for _ in range(iterations):
        wav = istft(magnitude * angles, config)
        rebuilt = stft(wav if peak_limit is None else wav.clamp(-peak_limit, peak_limit), config)
        angles = rebuilt - previous * (momentum / (1 + momentum))
        angles = angles / (angles.abs() + 1e-16)
        previous = rebuilt
        if refit:
            rebuilt_magnitude = rebuilt.abs().clamp(min=MAGNITUDE_EPS)
            magnitude = rebuilt_magnitude * (spread @ (target / (basis @ rebuilt_magnitude).clamp(min=MAGNITUDE_EPS)))
    wav = istft(magnitude * angles, config)
    return wav[0] if squeeze else wav


def load_audio(path: str | os.PathLike, sr: int = 16000) -> torch.Tensor:
    """Mono float32 waveform [T] at `sr` Hz from an audio file.

    soundfile reads WAV/FLAC/OGG/MP3; anything else (or a video file) is decoded by ffmpeg.
    Channels are averaged; the rate is converted with `clipsonic.resample.resample`.
    """
    import soundfile

    source = Path(path)
    if not source.is_file():
        raise MediaError(f"{source}: no such audio file")
    try:
        data, file_sr = soundfile.read(str(source), dtype="float32", always_2d=True)  # [T, C]
        wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1, dtype=np.float32)))
    except soundfile.LibsndfileError:
        from clipsonic.media import decode_audio_native

        wav_np, file_sr = decode_audio_native(source)
        wav = torch.from_numpy(wav_np)
    return resample(wav, int(file_sr), sr)


@dataclasses.dataclass(frozen=True)
class LevelChange:
    """What `playable` did to one waveform: gains in dB (0 = untouched)."""

    loudness_gain_db: float = 0.0  # to reach the requested loudness
    peak_gain_db: float = 0.0  # to keep the peak at PEAK_CEILING_DBFS; < 0 when it would have clipped
    peak: float = 0.0  # the peak before the peak guard, linear


def playable(wav: torch.Tensor, sample_rate: int, loudness: float | None = None) -> tuple[torch.Tensor, LevelChange]:
    """`wav` [T] ready for a file a person plays: NaN/Inf is a ValueError; with `loudness` (LUFS,
    ITU-R BS.1770 integrated) scaled to it; then, only when a sample would exceed full scale,
    scaled down so the peak is at PEAK_CEILING_DBFS. The model's own level is kept otherwise.
    A silent waveform is left silent (its loudness is -inf and cannot be normalised)."""
    if not torch.isfinite(wav).all():
        raise ValueError("the waveform holds NaN or Inf values")
    loudness_gain = 0.0
    if loudness is not None:
        from clipsonic.loudness import integrated_loudness

        measured = integrated_loudness(wav.double().cpu().numpy(), sample_rate)
        if math.isfinite(measured):
            loudness_gain = loudness - measured
            wav = wav * 10 ** (loudness_gain / 20)
    peak = float(wav.abs().max()) if wav.numel() else 0.0
    peak_gain = 0.0
    if peak > 1.0:
        peak_gain = PEAK_CEILING_DBFS - 20 * math.log10(peak)
        wav = wav * 10 ** (peak_gain / 20)
    return wav, LevelChange(loudness_gain, peak_gain, peak)


_SUBTYPES = {".wav": {"float32": "FLOAT", "pcm16": "PCM_16", "pcm24": "PCM_24"},
             ".flac": {"pcm16": "PCM_16", "pcm24": "PCM_24"}}


def save_audio(path: str | os.PathLike, wav: torch.Tensor | np.ndarray, sr: int = 16000,
               encoding: str | None = None) -> Path:
    """Write `wav` ([T], or [C, T]) atomically as WAV or FLAC, chosen by the file suffix.

    `encoding`: ``"float32"`` (WAV default), ``"pcm16"`` (FLAC default) or ``"pcm24"``.
    Integer encodings clip the signal to [-1, 1] (`playable` first keeps generated audio from
    clipping). NaN or Inf samples are a ValueError and nothing is written. Returns the path written.
    """
    import soundfile

    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in _SUBTYPES:
        raise MediaError(f"{target}: cannot write audio as {suffix or 'a file without suffix'} "
                         f"(use {' or '.join(_SUBTYPES)})")
    encoding = encoding or ("float32" if suffix == ".wav" else "pcm16")
    if encoding not in _SUBTYPES[suffix]:
        raise MediaError(f"{target}: {suffix} cannot hold {encoding} samples "
                         f"(choose from {', '.join(_SUBTYPES[suffix])})")
    samples = wav.detach().cpu().float().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav, np.float32)
    if samples.ndim == 2:
        samples = samples.T  # [C, T] -> [T, C] as soundfile expects
    elif samples.ndim != 1:
        raise ValueError(f"save_audio expects [T] or [C, T], got shape {samples.shape}")
    if not np.isfinite(samples).all():
        raise ValueError(f"{target}: the waveform holds NaN or Inf values (nothing written)")
    if encoding != "float32":
        samples = np.clip(samples, -1.0, 1.0)
    with atomic_path(target) as tmp:
        soundfile.write(str(tmp), samples, sr, subtype=_SUBTYPES[suffix][encoding],
                        format=suffix[1:].upper())
    return target
