"""Reference anti-aliased Snake activation (BigVGAN): 2x upsample -> snake/snakebeta -> 2x downsample."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SNAKE_EPS = 1e-9


def kaiser_sinc_filter(cutoff: float, half_width: float, size: int) -> torch.Tensor:
    """Kaiser-windowed sinc low-pass [size] (float32, unit DC gain), BigVGAN's recipe: Kaiser's
    beta from the attenuation of a transition of 4 * half_width, an even-size filter centred
    between its middle taps. Built in float64, then cast."""
    half = size // 2
    attenuation = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(size, periodic=False, beta=beta, dtype=torch.float64)
    time = torch.arange(-half, half, dtype=torch.float64) + 0.5 if size % 2 == 0 else \
        torch.arange(size, dtype=torch.float64) - half
    taps = 2 * cutoff * window * torch.sinc(2 * cutoff * time)
    return (taps / taps.sum()).float()


def snake(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor | None = None) -> torch.Tensor:
    """x + sin^2(alpha x) / beta (Snake when beta is None: beta = alpha); alpha, beta [C], linear scale."""
    a = alpha.to(x.dtype)[None, :, None]
    b = a if beta is None else beta.to(x.dtype)[None, :, None]
    return x + (1.0 / (b + SNAKE_EPS)) * torch.sin(x * a).pow(2)


def anti_alias_activation_reference(x: torch.Tensor, up_filter: torch.Tensor, down_filter: torch.Tensor,
                                    alpha: torch.Tensor, beta: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, C, T] -> [B, C, T]: upsample by 2 (transposed conv with `up_filter`, replicate
    padding), snake/snakebeta with per-channel `alpha`/`beta` (linear scale; exponentiate
    log-scale parameters first), low-pass with `down_filter` and keep every second sample."""
    channels = x.shape[1]
    size = up_filter.numel()
    if size != down_filter.numel() or size % 2:
        raise ValueError(f"filters must have the same even size, got {up_filter.numel()} and {down_filter.numel()}")
    pad = size // 2 - 1
    crop_left = pad * 2 + (size - 2) // 2
    crop_right = pad * 2 + (size - 2 + 1) // 2
    up_taps = up_filter.reshape(1, 1, size).to(x.dtype).expand(channels, 1, size)
    h = F.pad(x, (pad, pad), mode="replicate")
    h = 2 * F.conv_transpose1d(h, up_taps, stride=2, groups=channels)[..., crop_left:-crop_right]
    h = snake(h, alpha, beta)
    down_taps = down_filter.reshape(1, 1, size).to(x.dtype).expand(channels, 1, size)
    h = F.pad(h, (size // 2 - 1, size // 2), mode="replicate")
    return F.conv1d(h, down_taps, stride=2, groups=channels)
