"""BigVGAN's discriminators: multi-period (periods 2, 3, 5, 7, 11) and multi-resolution spectrogram.

Each returns, per sub-discriminator, its logits and the feature maps that feature matching compares.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

PERIODS = (2, 3, 5, 7, 11)
RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))  # n_fft, hop, window



def _judge(convs: nn.ModuleList, post: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Leaky-ReLU conv stack: logits [B, N] and every layer's output (for feature matching)."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), 0.1)
        features.append(x)
    x = post(x)
    features.append(x)
    return x.flatten(1), features


class PeriodDiscriminator(nn.Module):
    def __init__(self, period: int, width: int) -> None:
        super().__init__()
        self.period = period
        channels = [1, width, 4 * width, 16 * width, 32 * width, 32 * width]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(channels[i], channels[i + 1], (5, 1), (3, 1) if i < 4 else 1, padding=(2, 0)))
            for i in range(5))
        self.conv_post = weight_norm(nn.Conv2d(channels[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch, _, length = wav.shape
        if length % self.period:
            wav = F.pad(wav, (0, self.period - length % self.period), mode="reflect")
        return _judge(self.convs, self.conv_post, wav.view(batch, 1, -1, self.period))  # [B, 1, T / p, p]


class ResolutionDiscriminator(nn.Module):
    def __init__(self, resolution: tuple[int, int, int], width: int) -> None:
        super().__init__()
        self.n_fft, self.hop, self.window = resolution
        self.convs = nn.ModuleList([weight_norm(nn.Conv2d(1, width, (3, 9), padding=(1, 4)))] + [
            weight_norm(nn.Conv2d(width, width, (3, 9), stride=(1, 2), padding=(1, 4))) for _ in range(3)] + [
            weight_norm(nn.Conv2d(width, width, (3, 3), padding=(1, 1)))])
        self.conv_post = weight_norm(nn.Conv2d(width, 1, (3, 3), padding=(1, 1)))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        pad = (self.n_fft - self.hop) // 2
        padded = F.pad(wav, (pad, pad), mode="reflect")[:, 0]
        window = torch.hann_window(self.window, dtype=padded.dtype, device=padded.device)
        spec = torch.stft(padded, self.n_fft, self.hop, self.window, window, center=False, return_complex=True)
        return _judge(self.convs, self.conv_post, spec.abs().transpose(1, 2)[:, None])  # [B, 1, frames, bins]


class Discriminators(nn.Module):
    """Multi-period and multi-resolution discriminators: logits and features of each."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.period = nn.ModuleList(PeriodDiscriminator(p, width) for p in PERIODS)
        self.resolution = nn.ModuleList(ResolutionDiscriminator(r, width) for r in RESOLUTIONS)

    def forward(self, wav: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        return [d(wav) for d in [*self.period, *self.resolution]]


