"""Choose an implementation per op and call: explicit `impl`, else the environment, else the fastest.

``CLIPSONIC_OPS=reference`` forces every op onto its plain-PyTorch reference (for debugging
and for checking a kernel against it). An implementation asked for by name that this build or
this tensor cannot use is an error, never a silent substitution.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from clipsonic.ops import anti_alias_native, group_norm_native
from clipsonic.ops.anti_alias_reference import anti_alias_activation_reference
from clipsonic.ops.attention_reference import attention_reference
from clipsonic.ops.group_norm_reference import group_norm_reference

IMPLEMENTATIONS = ("reference", "triton", "cpp", "cuda")
ENVIRONMENT_VARIABLE = "CLIPSONIC_OPS"

# op name -> implementation name -> function; faster kernels add themselves here as they land.
_REGISTRY: dict[str, dict[str, Callable]] = {
    "attention": {"reference": attention_reference},
    "group_norm": {"reference": group_norm_reference, "cpp": group_norm_native.group_norm_cpp},
    "anti_alias_activation": {"reference": anti_alias_activation_reference,
                              "cpp": anti_alias_native.anti_alias_activation_cpp,
                              "cuda": anti_alias_native.anti_alias_activation_cuda},
}


def _choose(op: str, impl: str | None) -> Callable:
    if impl is None:
        impl = os.environ.get(ENVIRONMENT_VARIABLE) or "reference"
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {impl!r} for {op} (choose from {', '.join(IMPLEMENTATIONS)})")
    available = _REGISTRY[op]
    if impl not in available:
        raise ValueError(f"{op} has no {impl!r} implementation in this build (available: {', '.join(available)})")
    return available[impl]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
              impl: str | None = None, bias: torch.Tensor | None = None, dropout: float = 0.0) -> torch.Tensor:
    """Scaled dot-product attention, q [B, H, Lq, D], k/v [B, H, Lk, D] -> [B, H, Lq, D].

    `bias`: optional additive logits (relative positions, -inf masks) [.., Lq, Lk];
    `dropout`: attention-probability dropout while training. Calls using either go to an
    implementation that supports them (today the reference).
    """
    if bias is None and dropout == 0.0:
        return _choose("attention", impl)(q, k, v, causal=causal)
    return _choose("attention", impl)(q, k, v, causal=causal, bias=bias, dropout=dropout)


def group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float = 1e-5, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
               silu: bool = False, impl: str | None = None) -> torch.Tensor:
    """GroupNorm (+ h*(1+scale)+shift, + SiLU) of x [B, C, *spatial]; statistics in float32.

    With `impl` None, CPU tensors that need no gradient (float32 or bfloat16) go to the fused
    C++ kernel when it builds; everything else to the reference.
    """
    if impl is None and os.environ.get(ENVIRONMENT_VARIABLE) != "reference" and x.device.type == "cpu" \
            and x.dtype in (torch.float32, torch.bfloat16) and not _needs_grad(x, weight, bias, scale, shift) \
            and group_norm_native.cpu_module() is not None:
        impl = "cpp"
    return _choose("group_norm", impl)(x, num_groups, weight, bias, eps, scale=scale, shift=shift, silu=silu)


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def anti_alias_activation(x: torch.Tensor, up_filter: torch.Tensor, down_filter: torch.Tensor, alpha: torch.Tensor,
                          beta: torch.Tensor | None = None, impl: str | None = None) -> torch.Tensor:
    """BigVGAN's anti-aliased Snake(Beta) on x [B, C, T]: 2x up, x + sin^2(alpha x) / beta, 2x down.

    `alpha`, `beta` [C] are on the linear scale (beta None: Snake, beta = alpha). With
    `impl` None the compiled kernel for x's device is used when it applies (12-tap filters, no
    gradient needed, a supported dtype) and builds; otherwise the reference.
    """
    if impl is None and os.environ.get(ENVIRONMENT_VARIABLE) != "reference":
        impl = _compiled_anti_alias(x, up_filter, down_filter, alpha, beta)
    return _choose("anti_alias_activation", impl)(x, up_filter, down_filter, alpha, beta)


def _compiled_anti_alias(x: torch.Tensor, up_filter: torch.Tensor, down_filter: torch.Tensor, alpha: torch.Tensor,
                         beta: torch.Tensor | None) -> str | None:
    """"cpp" or "cuda" when that kernel can compute this call, else None (the reference)."""
    if _needs_grad(x, alpha, beta) or up_filter.numel() != 12 or down_filter.numel() != 12 or x.dim() != 3:
        return None
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16):
        return "cpp" if anti_alias_native.cpu_module() is not None else None
    if x.device.type == "cuda" and x.dtype in (torch.float32, torch.float16, torch.bfloat16) \
            and x.shape[0] * x.shape[1] <= 65535:
        return "cuda" if anti_alias_native.cuda_module() is not None else None
    return None
