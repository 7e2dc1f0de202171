"""Band-limited sample-rate conversion in torch: Kaiser-windowed sinc, polyphase.

Each output sample n sits at input position p = n * orig_sr / new_sr. It is the dot product
of the input around p with a low-pass kernel g(p - k): an ideal sinc cut off at
``rolloff * min(orig_sr, new_sr) / 2`` Hz, tapered by a Kaiser window that spans
`zero_crossings` zero crossings on each side. Because p's fractional part takes only
``new_sr / gcd(orig_sr, new_sr)`` values, the kernel is tabulated once per phase (float64,
each row normalised to unit DC gain) and the input is gathered per output sample, so any pair
of integer rates works with memory bounded by the phase table, not by the ratio's size.

With the defaults the stop band is attenuated by about 85 dB and starts at the output
Nyquist frequency; the pass band is flat to about 0.9 of it.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

OUTPUTS_PER_CHUNK = 16384
# Above this many kernel elements the strided-convolution form costs more memory than it saves.
MAX_DENSE_KERNEL = 1 << 22


@lru_cache(maxsize=16)
def _phase_table(orig_sr: int, new_sr: int, zero_crossings: int, rolloff: float,
                 beta: float) -> tuple[torch.Tensor, int]:
    """Kernel rows [phases, taps] in float64 and `first_tap`, the offset of tap 0 from floor(p)."""
    common = math.gcd(orig_sr, new_sr)
    phases, step = new_sr // common, orig_sr // common
    # Cutoff in cycles per input sample is cutoff/2; kernel g(d) = cutoff * sinc(cutoff * d).
    cutoff = rolloff * min(orig_sr, new_sr) / orig_sr
    half_width = zero_crossings / cutoff  # window support in input samples, each side
    reach = math.ceil(half_width)
    offsets = torch.arange(-reach + 1, reach + 1, dtype=torch.float64)  # input k - floor(p)
    fraction = (torch.arange(phases, dtype=torch.float64) * step % phases) / phases
    distance = fraction[:, None] - offsets[None, :]  # p - k for every phase and tap
    window_arg = (1 - (distance / half_width) ** 2).clamp(min=0)
    window = torch.special.i0(beta * window_arg.sqrt()) / torch.special.i0(torch.tensor(beta, dtype=torch.float64))
    window = torch.where(distance.abs() <= half_width, window, torch.zeros_like(window))
    kernel = cutoff * torch.sinc(cutoff * distance) * window
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    return kernel, -reach + 1


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int, *, zero_crossings: int = 48,
             rolloff: float = 0.95, beta: float = 8.6) -> torch.Tensor:
    """Resample `wav` [..., T] from `orig_sr` to `new_sr` -> [..., ceil(T * new_sr / orig_sr)].

    The signal is taken as zero outside [0, T). Works for floating dtypes on any device;
    the kernel is computed in float64 and applied in the input's dtype.
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if not wav.is_floating_point():
        raise TypeError(f"resample needs a floating-point waveform, got {wav.dtype}")
    if orig_sr == new_sr:
        return wav
    kernel, first_tap = _phase_table(int(orig_sr), int(new_sr), zero_crossings, rolloff, beta)
    kernel = kernel.to(device=wav.device, dtype=wav.dtype)
    common = math.gcd(orig_sr, new_sr)
    phases, step = new_sr // common, orig_sr // common
    taps = kernel.shape[1]

    length = wav.shape[-1]
    out_length = -(-length * phases // step)
    flat = wav.reshape(-1, length)  # [B, T]
    if phases * (step + taps) <= MAX_DENSE_KERNEL:
        out = _apply_strided(flat, kernel, first_tap, phases, step, out_length)
    else:
        out = _apply_gathered(flat, kernel, first_tap, phases, step, out_length)
    return out.reshape(*wav.shape[:-1], out_length)


def _apply_strided(flat: torch.Tensor, kernel: torch.Tensor, first_tap: int, phases: int,
                   step: int, out_length: int) -> torch.Tensor:
    """One strided conv1d: output channel j is phase j, its taps placed at floor(j*step/phases)."""
    taps = kernel.shape[1]
    starts = torch.arange(phases) * step // phases  # floor(p) - q*step for each phase
    dense = kernel.new_zeros(phases, step - 1 + taps)
    columns = starts[:, None] + torch.arange(taps)[None, :]
    dense.scatter_(1, columns.to(kernel.device), kernel)
    frames = -(-out_length // phases)
    needed = (frames - 1) * step + dense.shape[1]
    lead = -first_tap
    padded = torch.nn.functional.pad(flat, (lead, max(0, needed - lead - flat.shape[1])))
    out = torch.nn.functional.conv1d(padded[:, None, :], dense[:, None, :], stride=step)  # [B, phases, frames]
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)  # [B, frames * phases], phase fastest
    return out[:, :out_length]


def _apply_gathered(flat: torch.Tensor, kernel: torch.Tensor, first_tap: int, phases: int,
                    step: int, out_length: int) -> torch.Tensor:
    """Per-output gather, in chunks: for rate pairs whose dense polyphase kernel would be huge."""
    taps = kernel.shape[1]
    lead = -first_tap
    padded = torch.nn.functional.pad(flat, (lead, taps))  # [B, T + pad]
    tap_offsets = torch.arange(taps, device=flat.device)
    chunks = []
    for start in range(0, out_length, OUTPUTS_PER_CHUNK):
        n = torch.arange(start, min(start + OUTPUTS_PER_CHUNK, out_length), device=flat.device)
        phase = n % phases
        floor_position = (n // phases) * step + (phase * step) // phases
        index = floor_position[:, None] + tap_offsets[None, :]  # [N, taps] into `padded`
        chunks.append((padded[:, index] * kernel[phase]).sum(dim=-1))  # [B, N]
    return torch.cat(chunks, dim=-1) if chunks else padded.new_zeros(padded.shape[0], 0)
