"""BS.1770-4 integrated loudness: the standard's table, analytic sines, EBU Tech 3341 levels,
and pyloudnorm's values on seeded signals (tests/fixtures/make_loudness_fixture.py)."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from clipsonic.loudness import (BS1770_TABLE_48K, SCAN_BLOCK, integrated_loudness, k_weight,
                                k_weighting_coefficients, normalize_loudness)
from conftest import FIXTURES

FIXTURE = json.loads((FIXTURES / "loudness_pyloudnorm.json").read_text())
SINE_DB = 10.0 * math.log10(2.0)  # a sine's mean square is half its peak squared: 3.0103 dB


def _load_recipes():
    """The fixture script as a module (its pyloudnorm import is inside main, never run here)."""
    path = FIXTURES / "make_loudness_fixture.py"
    spec = importlib.util.spec_from_file_location("make_loudness_fixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECIPES = _load_recipes()


def sine(freq: float, rate: int, seconds: float, peak_db: float = 0.0) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return 10.0 ** (peak_db / 20.0) * np.sin(2.0 * np.pi * freq * t)


def sample_loop(x: np.ndarray, b: np.ndarray, a: np.ndarray) -> np.ndarray:
    """The textbook direct-form-I biquad, one sample at a time: x [T] -> [T]."""
    y = np.zeros_like(x)
    x1 = x2 = y1 = y2 = 0.0
    for n, xn in enumerate(x.tolist()):
        yn = b[0] * xn + b[1] * x1 + b[2] * x2 - a[1] * y1 - a[2] * y2
        y[n] = yn
        x1, x2, y1, y2 = xn, x1, yn, y1
    return y


def test_coefficients_reproduce_the_bs1770_table_at_48k():
    # The fitted prototypes hit the table to rounding (measured 9e-16).
    for (b, a), (table_b, table_a) in zip(k_weighting_coefficients(48000), BS1770_TABLE_48K):
        np.testing.assert_allclose(b, table_b, rtol=0, atol=1e-13)
        np.testing.assert_allclose(a, table_a, rtol=0, atol=1e-13)


@pytest.mark.parametrize("rate", sorted(FIXTURE["coefficients"]))
def test_coefficients_match_pyloudnorm(rate):
    # pyloudnorm's "DeMan" constants agree with libebur128's to ~12 digits (measured 1.05e-12).
    stages = FIXTURE["coefficients"][rate]
    for (b, a), stage in zip(k_weighting_coefficients(int(rate)), ("shelf", "highpass")):
        np.testing.assert_allclose(b, stages[stage]["b"], rtol=0, atol=1e-11)
        np.testing.assert_allclose(a, stages[stage]["a"], rtol=0, atol=1e-11)


@pytest.mark.parametrize("rate", [16000, 48000])
def test_blocked_filter_matches_a_sample_loop(rate):
    rng = np.random.default_rng(0)
    length = 5 * SCAN_BLOCK + 37  # several block boundaries and a ragged last block
    x = 0.3 * rng.standard_normal((2, length))
    x[1] += 0.5  # a DC offset: the high-pass's recursion has a DC gain of ~1e4
    expected = x.copy()
    for b, a in k_weighting_coefficients(rate):
        expected = np.stack([sample_loop(channel, b, a) for channel in expected])
    got = k_weight(x, rate)
    assert got.shape == x.shape and got.dtype == np.float64
    # Rounding differs from the loop's, and the high-pass's slow poles amplify it: measured up
    # to 1.5e-11 at 48 kHz over seeds 0-3 (peak 1.8); scipy's lfilter is off by 2e-13 of it.
    np.testing.assert_allclose(got, expected, rtol=0, atol=5e-11)


@pytest.mark.parametrize("recipe", FIXTURE["signals"], ids=lambda r: r["name"])
def test_matches_pyloudnorm(recipe):
    # Measured within 5.2e-12 LU; 1e-9 leaves room for BLAS rounding on other machines.
    wav = RECIPES.make_signal(recipe)
    got = integrated_loudness(wav[0] if wav.shape[0] == 1 else wav, recipe["sample_rate"])
    if recipe["lufs"] == -math.inf:
        assert got == -math.inf
    else:
        assert abs(got - recipe["lufs"]) < 1e-9


@pytest.mark.parametrize("peak_db", [0.0, -6.0, -20.0])
def test_997hz_sine_reads_its_rms_at_48k(peak_db):
    # K-weighting's gain at 997 Hz is what the -0.691 offset cancels (measured 3e-5 LU off).
    got = integrated_loudness(sine(997.0, 48000, 3.0, peak_db), 48000)
    assert got == pytest.approx(peak_db - SINE_DB, abs=0.01)


def test_997hz_sine_at_16k():
    # At 16 kHz the bilinear transform warps the shelf a little: measured 0.040 LU high.
    got = integrated_loudness(sine(997.0, 16000, 3.0), 16000)
    assert got == pytest.approx(-SINE_DB, abs=0.05)


def test_tech3341_stereo_sine_at_minus_23():
    # EBU Tech 3341 case 1: a 1 kHz sine at -23 dBFS in both channels reads -23.0 LUFS.
    x = sine(1000.0, 48000, 20.0, -23.0)
    assert integrated_loudness(np.stack([x, x]), 48000) == pytest.approx(-23.0, abs=0.1)


@pytest.mark.parametrize("parts", [
    [(10, -36.0), (60, -23.0), (10, -36.0)],
    [(10, -72.0), (10, -36.0), (60, -23.0), (10, -36.0), (10, -72.0)],
], ids=["relative_gate", "both_gates"])
def test_tech3341_gated_cases(parts):
    # Tech 3341 cases 3 and 4. The ungated mean of the -23 and -36 parts is near -24.2 LUFS,
    # so the relative gate (about -34.2) drops the -36 parts; -72 is below the absolute gate.
    x = np.concatenate([sine(1000.0, 48000, seconds, db) for seconds, db in parts])
    assert integrated_loudness(np.stack([x, x]), 48000) == pytest.approx(-23.0, abs=0.1)


def test_surround_channels_weigh_1_41():
    x = 0.1 * np.random.default_rng(1).standard_normal(32000)
    surround = np.zeros((5, x.size))
    surround[3] = x
    gap = integrated_loudness(surround, 16000) - integrated_loudness(x, 16000)
    assert gap == pytest.approx(10.0 * math.log10(1.41), abs=1e-9)


def test_torch_and_numpy_and_mono_layouts_agree():
    x = (0.2 * np.random.default_rng(2).standard_normal(20000)).astype(np.float32)
    reference = integrated_loudness(x, 16000)
    assert integrated_loudness(torch.from_numpy(x), 16000) == reference
    assert integrated_loudness(x[None], 16000) == reference  # [1, T] is mono too


def test_silence_is_minus_infinity():
    assert integrated_loudness(np.zeros(16000), 16000) == -math.inf
    assert integrated_loudness(torch.zeros(2, 16000), 16000) == -math.inf


def test_one_block_is_the_shortest_signal():
    x = 0.1 * np.random.default_rng(3).standard_normal(6400)
    assert math.isfinite(integrated_loudness(x, 16000))
    with pytest.raises(ValueError, match="400 ms"):
        integrated_loudness(x[:-1], 16000)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_normalize_reaches_the_target(dtype):
    x = (0.05 * np.random.default_rng(4).standard_normal(40000)).astype(dtype)
    before = integrated_loudness(x, 16000)
    scaled, gain_db = normalize_loudness(x, 16000, -23.0)
    assert scaled.dtype == dtype and scaled.shape == x.shape
    assert gain_db == pytest.approx(-23.0 - before, abs=1e-12)
    assert integrated_loudness(scaled, 16000) == pytest.approx(-23.0, abs=0.01)


def test_normalize_keeps_a_tensor_a_tensor():
    x = torch.from_numpy(0.3 * np.random.default_rng(5).standard_normal((2, 16000))).float()
    scaled, _ = normalize_loudness(x, 16000, -16.0)
    assert isinstance(scaled, torch.Tensor) and scaled.dtype == torch.float32
    assert integrated_loudness(scaled, 16000) == pytest.approx(-16.0, abs=0.01)


def test_normalize_refuses_silence_and_bad_targets():
    with pytest.raises(ValueError, match="silent.*target_lufs"):
        normalize_loudness(np.zeros(16000), 16000, -23.0)
    x = 0.1 * np.random.default_rng(6).standard_normal(16000)
    for target in (math.nan, math.inf):
        with pytest.raises(ValueError, match="target_lufs"):
            normalize_loudness(x, 16000, target)
    with pytest.raises(TypeError, match="target_lufs"):
        normalize_loudness(x, 16000, "loud")


@pytest.mark.parametrize("wav, match", [
    (np.full(16000, np.nan), "NaN"),
    (np.zeros((1, 2, 16000)), "shape"),
    (np.zeros((16000, 2)), "shape"),  # [T, C]: transposed
    (np.zeros((6, 16000)), "shape"),  # LFE and beyond are not measured
    (np.zeros(16000, dtype=np.int16), "floating point"),
    (torch.zeros(16000, dtype=torch.int16), "floating point"),
])
def test_bad_wav(wav, match):
    with pytest.raises(ValueError, match=match):
        integrated_loudness(wav, 16000)


@pytest.mark.parametrize("rate", [0, -16000, math.nan, math.inf, 3000])
def test_bad_sample_rate(rate):
    with pytest.raises(ValueError, match="sample_rate"):
        integrated_loudness(np.zeros(16000), rate)


@pytest.mark.parametrize("rate", [True, "16000", None])
def test_sample_rate_must_be_a_number(rate):
    with pytest.raises(TypeError, match="sample_rate"):
        integrated_loudness(np.zeros(16000), rate)
