import math

import pytest
import torch

from clipsonic import resample as resampling
from clipsonic.resample import resample


def tone(frequency: float, sr: int, seconds: float = 1.0) -> torch.Tensor:
    # Phases in float64: a float32 time axis alone adds -40 dB of phase noise at 10 s.
    t = torch.arange(int(sr * seconds), dtype=torch.float64) / sr
    return torch.sin(2 * math.pi * frequency * t)


def level_db(signal: torch.Tensor) -> float:
    return 10 * math.log10(signal.double().pow(2).mean().item() / 0.5)


EDGE = 2000  # output samples beyond the filter's reach at both ends


@pytest.mark.parametrize("orig_sr", [8000, 11025, 22050, 32000, 44100, 48000, 96000])
def test_a_sine_keeps_its_frequency_and_level(orig_sr):
    out = resample(tone(1000, orig_sr).float(), orig_sr, 16000)
    assert out.shape == (16000,)
    expected = tone(1000, 16000)
    torch.testing.assert_close(out[EDGE:-EDGE].double(), expected[EDGE:-EDGE], rtol=0, atol=2e-3)


@pytest.mark.parametrize("orig_sr,frequency", [(44100, 12000), (48000, 9000), (22050, 10000), (44100, 20000)])
def test_frequencies_above_the_new_nyquist_are_suppressed_60_db(orig_sr, frequency):
    out = resample(tone(frequency, orig_sr), orig_sr, 16000)
    assert level_db(out[EDGE:-EDGE]) < -60


def test_upsampling_suppresses_images():
    out = resample(tone(3000, 8000), 8000, 16000)
    spectrum = torch.fft.rfft(out[EDGE:-EDGE] * torch.hann_window(out.shape[0] - 2 * EDGE, dtype=torch.float64))
    freqs = torch.fft.rfftfreq(out.shape[0] - 2 * EDGE, 1 / 16000)
    peak = spectrum.abs().max()
    image = spectrum.abs()[(freqs > 4500) & (freqs < 5500)].max()  # the image of 3 kHz sits at 5 kHz
    assert 20 * math.log10(image / peak) < -60


def test_output_length_and_batch_shape():
    wav = torch.randn(2, 3, 44100)
    out = resample(wav, 44100, 16000)
    assert out.shape == (2, 3, 16000)
    torch.testing.assert_close(out[1, 2], resample(wav[1, 2], 44100, 16000))
    assert resample(torch.randn(1001), 44100, 16000).shape == (math.ceil(1001 * 16000 / 44100),)
    same = torch.randn(50)
    assert resample(same, 16000, 16000) is same


def test_gathered_and_strided_paths_agree():
    wav = torch.randn(2, 5000, dtype=torch.float64)
    kernel, first_tap = resampling._phase_table(44100, 16000, 48, 0.95, 8.6)
    out_length = math.ceil(5000 * 160 / 441)
    strided = resampling._apply_strided(wav, kernel, first_tap, 160, 441, out_length)
    gathered = resampling._apply_gathered(wav, kernel, first_tap, 160, 441, out_length)
    torch.testing.assert_close(strided, gathered, rtol=0, atol=1e-12)


def test_awkward_rates_take_the_gathered_path():
    out = resample(tone(1000, 44101).float(), 44101, 16000)
    expected = tone(1000, 16000)
    torch.testing.assert_close(out[EDGE:-EDGE].double(), expected[EDGE:-EDGE], rtol=0, atol=2e-3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        resample(torch.zeros(10), 0, 16000)
    with pytest.raises(TypeError, match="floating-point"):
        resample(torch.zeros(10, dtype=torch.int16), 44100, 16000)
