"""Slaney-style mel filterbank, computed in float64 with numpy; no librosa at run time.

The recipe is librosa's ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=False,
norm="slaney")``, which BigVGAN's ``mel_spectrogram`` uses:

* the Slaney mel scale is linear below 1 kHz (200/3 Hz per mel) and logarithmic above
  (a factor 6.4 every 27 mels);
* ``n_mels + 2`` edges are spaced evenly in mels from `fmin` to `fmax` (default sr/2);
* filter i is a triangle over the FFT bin frequencies ``linspace(0, sr/2, n_fft//2 + 1)``
  rising from edge i to edge i+1 and falling to edge i+2;
* each triangle is scaled by ``2 / (edge[i+2] - edge[i])`` so that it has unit area in Hz.

The common configuration ships precomputed as ``assets/mel_filters.npz`` (float64, keyed
``"{sr}_{n_fft}_{n_mels}_{fmin}_{fmax}"``); it was written by::

    np.savez_compressed("clipsonic/assets/mel_filters.npz",
                        **{"16000_2048_64_0_8000": slaney_mel_filterbank(16000, 2048, 64, 0, 8000)})

and a test checks that it still equals this function and librosa.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

_LINEAR_HZ_PER_MEL = 200.0 / 3.0
_LOG_START_HZ = 1000.0
_LOG_START_MEL = _LOG_START_HZ / _LINEAR_HZ_PER_MEL
_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _LINEAR_HZ_PER_MEL
    logarithmic = _LOG_START_MEL + np.log(np.maximum(hz, _LOG_START_HZ) / _LOG_START_HZ) / _LOG_STEP
    return np.where(hz >= _LOG_START_HZ, logarithmic, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _LINEAR_HZ_PER_MEL
    logarithmic = _LOG_START_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _LOG_START_MEL) - _LOG_START_MEL))
    return np.where(mel >= _LOG_START_MEL, logarithmic, linear)


def slaney_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                          fmax: float | None = None) -> np.ndarray:
    """Mel filterbank [n_mels, n_fft // 2 + 1] in float64 (see the module docstring)."""
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    bin_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    to_edge = edges[:, None] - bin_hz[None, :]  # [n_mels + 2, n_bins]
    rising = -to_edge[:-2] / widths[:-1, None]
    falling = to_edge[2:] / widths[1:, None]
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return triangles * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def asset_key(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> str:
    def number(value: float | None) -> str:
        return "None" if value is None else f"{value:g}"
    return f"{sample_rate}_{n_fft}_{n_mels}_{number(fmin)}_{number(fmax)}"


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """The shipped filterbank when the configuration has one, else computed; float64, read-only."""
    key = asset_key(sample_rate, n_fft, n_mels, fmin, fmax)
    with resources.files("clipsonic.assets").joinpath("mel_filters.npz").open("rb") as handle:
        shipped = np.load(handle)
        bank = shipped[key] if key in shipped.files else None
    if bank is None:
        bank = slaney_mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
    bank.setflags(write=False)
    return bank
