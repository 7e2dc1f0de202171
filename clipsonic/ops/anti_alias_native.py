"""The compiled anti-aliased activations (csrc/anti_alias_cpu.cpp, csrc/anti_alias_cuda.{cu,cpp}).

Forward only: calls that need gradients go to the reference (see `clipsonic.ops.dispatch`).
"""

from __future__ import annotations

import torch

from clipsonic.ops import extensions

CPU_EXTENSION = ("clipsonic_anti_alias_cpu", ("anti_alias_cpu.cpp",))
CUDA_EXTENSION = ("clipsonic_anti_alias_cuda", ("anti_alias_cuda.cpp", "anti_alias_cuda.cu"))


def cpu_module():
    return extensions.load(*CPU_EXTENSION)


def cuda_module():
    return extensions.load(*CUDA_EXTENSION, cuda=True)


def _call(module, kind: str, x, up_filter, down_filter, alpha, beta) -> torch.Tensor:
    if module is None:
        raise RuntimeError(f"the {kind} anti-aliased activation could not be built on this machine (see the log)")
    empty = alpha.new_empty(0)
    return module.anti_alias_activation(x, up_filter, down_filter, alpha.detach(),
                                        empty if beta is None else beta.detach())


def anti_alias_activation_cpp(x: torch.Tensor, up_filter: torch.Tensor, down_filter: torch.Tensor,
                              alpha: torch.Tensor, beta: torch.Tensor | None = None) -> torch.Tensor:
    """C++ (OpenMP) version of `anti_alias_activation_reference`: CPU, float32 or bfloat16, 12-tap filters."""
    return _call(cpu_module(), "C++", x, up_filter, down_filter, alpha, beta)


def anti_alias_activation_cuda(x: torch.Tensor, up_filter: torch.Tensor, down_filter: torch.Tensor,
                               alpha: torch.Tensor, beta: torch.Tensor | None = None) -> torch.Tensor:
    """CUDA version of `anti_alias_activation_reference`: float32/float16/bfloat16, 12-tap filters."""
    return _call(cuda_module(), "CUDA", x, up_filter, down_filter, alpha, beta)
