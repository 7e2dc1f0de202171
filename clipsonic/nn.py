"""Layers shared by the models, and the dtype policy that keeps normalisation in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype; the result takes the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): OpenAI CLIP's GELU approximation, which its weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


NORM_TYPES = (nn.LayerNorm, nn.GroupNorm)


def set_precision(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast parameters and floating buffers to `dtype`, except in normalisation layers (float32)."""
    for child in module.modules():
        keep_fp32 = isinstance(child, NORM_TYPES)
        target = torch.float32 if keep_fp32 else dtype
        for name, parameter in child.named_parameters(recurse=False):
            if parameter.is_floating_point() and parameter.dtype != target:
                parameter.data = parameter.data.to(target)
        for name, buffer in child.named_buffers(recurse=False):
            if buffer.is_floating_point() and buffer.dtype != target:
                setattr(child, name, buffer.to(target))
    return module


def module_dtype(module: nn.Module) -> torch.dtype:
    """The compute dtype of a model: that of its first parameter outside the norm layers."""
    for child in module.modules():
        if isinstance(child, NORM_TYPES):
            continue
        for parameter in child.parameters(recurse=False):
            if parameter.is_floating_point():
                return parameter.dtype
    return torch.float32
