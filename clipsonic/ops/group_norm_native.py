"""The compiled CPU GroupNorm (+ scale-shift + SiLU) of csrc/group_norm_cpu.cpp. Forward only."""

from __future__ import annotations

import torch

from clipsonic.ops import extensions

CPU_EXTENSION = ("clipsonic_group_norm_cpu", ("group_norm_cpu.cpp",))


def cpu_module():
    return extensions.load(*CPU_EXTENSION)


def group_norm_cpp(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   eps: float, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                   silu: bool = False) -> torch.Tensor:
    """C++ version of `group_norm_reference` for float32/bfloat16 CPU tensors, contiguous or channels-last;
    everything after the statistics in float32, rounded once to x's dtype."""
    module = cpu_module()
    if module is None:
        raise RuntimeError("the C++ GroupNorm could not be built on this machine (see the log)")
    detach = [None if t is None else t.detach() for t in (weight, bias, scale, shift)]
    return module.group_norm(x.detach(), num_groups, *detach[:2], eps, *detach[2:], silu)
