"""Reference GroupNorm with the UNet's fused extras: h*(1+scale)+shift and SiLU, in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def group_norm_reference(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                         eps: float, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                         silu: bool = False) -> torch.Tensor:
    """GroupNorm of x [B, C, *spatial] with statistics in float32; the result has x's dtype.

    `scale` and `shift` ([B, C]) apply h * (1 + scale) + shift after the affine; `silu` then
    applies h * sigmoid(h). For float32 input everything is float32. For bf16/fp16 input,
    torch's mixed-precision kernel normalises (float32 statistics and affine, like
    ``F.group_norm(x.float(), ...)``) and the elementwise steps after it run in x's dtype, which
    avoids a float32 copy of the activations.
    """
    weight = None if weight is None else weight.float()
    bias = None if bias is None else bias.float()
    h = F.group_norm(x, num_groups, weight, bias, eps) if x.dtype != torch.float64 else \
        F.group_norm(x, num_groups, None if weight is None else weight.double(),
                     None if bias is None else bias.double(), eps)
    extra = (1,) * (x.dim() - 2)
    # In place when nothing records the graph: h is a fresh tensor and these are hot.
    inplace = not (torch.is_grad_enabled() and (h.requires_grad or any(
        t is not None and t.requires_grad for t in (scale, shift))))
    if scale is not None:
        factor = 1 + scale.to(h.dtype).view(*scale.shape, *extra)
        h = h.mul_(factor) if inplace else h * factor
    if shift is not None:
        offset = shift.to(h.dtype).view(*shift.shape, *extra)
        h = h.add_(offset) if inplace else h + offset
    if silu:
        h = F.silu(h, inplace=inplace)
    return h
