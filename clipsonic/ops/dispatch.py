"""Choose an implementation per op and call: explicit `impl`, else the environment, else the fastest.

``CLIPSONIC_OPS=reference`` forces every op onto its plain-PyTorch reference (for debugging
and for checking a kernel against it). An implementation asked for by name that this build or
this tensor cannot use is an error, never a silent substitution.

Left to choose, CUDA tensors that need no gradient go to the Triton kernels (imported here on
first use, so `import clipsonic.ops` never imports Triton); when Triton is missing or fails,
one warning says why and the reference takes over for the rest of the process. Calls that
need gradients stay on the reference, whose backward is the fast one.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable
from types import ModuleType

import torch

from clipsonic.ops import anti_alias_native, group_norm_native
from clipsonic.ops.anti_alias_reference import anti_alias_activation_reference
from clipsonic.ops.attention_reference import attention_reference
from clipsonic.ops.group_norm_reference import group_norm_reference

IMPLEMENTATIONS = ("reference", "triton", "cpp", "cuda")
ENVIRONMENT_VARIABLE = "CLIPSONIC_OPS"

# op name -> Triton module, imported on first use (importing Triton costs about a second).
_TRITON_MODULES = {"attention": "clipsonic.ops.attention_triton", "group_norm": "clipsonic.ops.group_norm_triton"}
_triton_broken: dict[str, str] = {}  # op -> why Triton was given up for it in this process


def _triton_module(op: str) -> ModuleType:
    return importlib.import_module(_TRITON_MODULES[op])


def _requested_triton(op: str, x: torch.Tensor) -> ModuleType:
    """The Triton module for an explicit ``impl="triton"``, or a ValueError saying why not.

    CPU tensors need the interpreter; checking before the import keeps the kernels undefined
    until ``TRITON_INTERPRET`` can be set (they are built interpreted or not when defined).
    """
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"triton {op} needs CUDA tensors, got {x.device.type} "
                         "(set TRITON_INTERPRET=1 to run it on CPU in Triton's interpreter)")
    try:
        return _triton_module(op)
    except ImportError as error:
        raise ValueError(f"triton {op} is not available in this environment ({error})") from error


def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                     **unsupported) -> torch.Tensor:
    """`clipsonic.ops.attention_triton.attention_triton`, imported when first called."""
    if unsupported:
        raise ValueError("triton attention supports neither bias nor dropout; use impl='reference'")
    return _requested_triton("attention", q).attention_triton(q, k, v, causal)


def group_norm_triton(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """`clipsonic.ops.group_norm_triton.group_norm_triton`, imported when first called."""
    return _requested_triton("group_norm", x).group_norm_triton(x, *args, **kwargs)


# op name -> implementation name -> function; faster kernels add themselves here as they land.
_REGISTRY: dict[str, dict[str, Callable]] = {
    "attention": {"reference": attention_reference, "triton": attention_triton},
    "group_norm": {"reference": group_norm_reference, "triton": group_norm_triton,
                   "cpp": group_norm_native.group_norm_cpp},
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
    implementation that supports them (today the reference). With `impl` None, CUDA tensors
    that need no gradient go to the Triton kernel when it applies (D <= 128, fp16/bf16/fp32).
    """
    if bias is not None or dropout != 0.0:
        return _choose("attention", impl)(q, k, v, causal=causal, bias=bias, dropout=dropout)
    if impl is None and _wants_triton((q, k, v), ()):
        return _try_triton("attention", (q, k, v), dict(causal=causal),
                           lambda module: module.unsupported(q, k, v),
                           lambda: attention_reference(q, k, v, causal=causal))
    return _choose("attention", impl)(q, k, v, causal=causal)


def group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float = 1e-5, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
               silu: bool = False, impl: str | None = None) -> torch.Tensor:
    """GroupNorm (+ h*(1+scale)+shift, + SiLU) of x [B, C, *spatial]; statistics in float32.

    With `impl` None, tensors that need no gradient go to a fused kernel: on CPU (float32 or
    bfloat16) the C++ one when it builds, on CUDA the Triton one; everything else to the reference.
    """
    if impl is None and _wants_triton((x,), (weight, bias, scale, shift)):
        return _try_triton("group_norm", (x, num_groups, weight, bias, eps),
                           dict(scale=scale, shift=shift, silu=silu),
                           lambda module: module.unsupported(x, num_groups, weight, bias, scale, shift),
                           lambda: group_norm_reference(x, num_groups, weight, bias, eps, scale=scale, shift=shift,
                                                        silu=silu))
    if impl is None and os.environ.get(ENVIRONMENT_VARIABLE) != "reference" and x.device.type == "cpu" \
            and x.dtype in (torch.float32, torch.bfloat16) and not _needs_grad(x, weight, bias, scale, shift) \
            and group_norm_native.cpu_module() is not None:
        impl = "cpp"
    return _choose("group_norm", impl)(x, num_groups, weight, bias, eps, scale=scale, shift=shift, silu=silu)


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _wants_triton(inputs: tuple[torch.Tensor, ...], parameters: tuple[torch.Tensor | None, ...]) -> bool:
    """Left to choose: CUDA inputs, no gradient needed, no environment override."""
    return not os.environ.get(ENVIRONMENT_VARIABLE) and inputs[0].device.type == "cuda" \
        and not _needs_grad(*inputs, *parameters)


def _try_triton(op: str, args: tuple, kwargs: dict, unsupported: Callable[[ModuleType], str | None],
                reference: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The Triton kernel for a call it can compute, else the reference; a Triton that cannot be
    imported or whose kernel fails (no compiler for this GPU, say) is given up with one warning."""
    if op in _triton_broken:
        return reference()
    try:
        module = _triton_module(op)
        if unsupported(module) is not None:  # a shape or dtype the kernel does not cover
            return reference()
        return getattr(module, f"{op}_triton")(*args, **kwargs)
    except torch.cuda.OutOfMemoryError:
        raise  # the reference would need the memory too
    except Exception as error:  # any failure means: use the reference, and say why once
        _triton_broken[op] = f"{type(error).__name__}: {error}".splitlines()[0]
        if len(_triton_broken) == 1:
            warnings.warn(f"Triton {op} is unusable ({_triton_broken[op]}); using the PyTorch reference "
                          f"(set {ENVIRONMENT_VARIABLE}=reference to silence this)", RuntimeWarning, stacklevel=3)
        return reference()


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
