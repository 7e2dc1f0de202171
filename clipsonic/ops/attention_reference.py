"""Reference scaled dot-product attention: torch's SDPA, the ground truth for faster kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for q [B, H, Lq, D], k and v [B, H, Lk, D] -> [B, H, Lq, D].

    With `causal`, query i sees keys 0..i (top-left aligned, as in a decoder over one sequence).
    """
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
