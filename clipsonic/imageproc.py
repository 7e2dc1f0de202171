"""Image resizing that reproduces Pillow's antialiased bicubic ``Image.resize`` on 8-bit RGB.

CLIP was trained on images resized by PIL, so we follow its arithmetic rather than
torch's bicubic (which uses a = -0.75 and no 8-bit rounding):

- the cubic convolution kernel with a = -0.5, support 2 pixels, stretched by the downscale
  factor when shrinking (that stretch is the antialiasing);
- output pixel i is centred on input coordinate (i + 0.5) * in/out; its taps are the input
  pixels whose centres fall within the support, weights normalised to sum to one;
- weights in 22-bit fixed point (rounded half away from zero); each pass rounds and clips
  to 8 bits; the horizontal pass runs first, then the vertical one.
"""

from __future__ import annotations


import numpy as np
import torch

_PRECISION_BITS = 22


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def resample_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First input index [out] and fixed-point weights [out, taps] (int64) of each output pixel."""
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    centers = (np.arange(out_size) + 0.5) * scale
    first = np.maximum((centers - support + 0.5).astype(np.int64), 0)  # int() truncates toward zero
    last = np.minimum((centers + support + 0.5).astype(np.int64), in_size)
    taps = int((last - first).max())
    offsets = np.arange(taps)
    inside = offsets[None, :] < (last - first)[:, None]
    weights = _cubic((first[:, None] + offsets[None, :] - centers[:, None] + 0.5) / stretch) * inside
    totals = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, totals, out=np.zeros_like(weights), where=totals != 0)
    fixed = np.trunc(weights * (1 << _PRECISION_BITS) + np.where(weights < 0, -0.5, 0.5)).astype(np.int64)
    return torch.from_numpy(first), torch.from_numpy(fixed)


def _resample_axis(image: torch.Tensor, axis: int, first: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One 8-bit pass along `axis` (0 = rows, 1 = columns) of a uint8 [H, W, C] image."""
    size = image.shape[axis]
    index = (first[:, None] + torch.arange(weights.shape[1])[None, :]).clamp(max=size - 1)  # [out, taps]
    moved = image.movedim(axis, 0).long()  # [size, other, C]
    gathered = moved[index]  # [out, taps, other, C]
    total = (gathered * weights[:, :, None, None]).sum(dim=1) + (1 << (_PRECISION_BITS - 1))
    return (total >> _PRECISION_BITS).clamp(0, 255).to(torch.uint8).movedim(0, axis)


def resize_center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 [H, W, 3] so the shorter side is `size` (torchvision's Resize rule), then
    take the centred `size` x `size` crop (torchvision's CenterCrop rule) -> uint8 [size, size, 3].

    Only the output rows and columns inside the crop are computed.
    """
    height, width = image.shape[:2]
    if height <= width:
        new_height, new_width = size, int(size * width / height)
    else:
        new_height, new_width = int(size * height / width), size
    top = int(round((new_height - size) / 2.0))
    left = int(round((new_width - size) / 2.0))
    out = image
    if new_width != width:
        first, weights = resample_taps(width, new_width)
        out = _resample_axis(out, 1, first[left:left + size], weights[left:left + size])
    else:
        out = out[:, left:left + size]
    if new_height != height:
        first, weights = resample_taps(height, new_height)
        out = _resample_axis(out, 0, first[top:top + size], weights[top:top + size])
    else:
        out = out[top:top + size]
    return out.contiguous()
