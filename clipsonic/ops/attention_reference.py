"""Reference scaled dot-product attention: torch's SDPA, the ground truth for faster kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                        bias: torch.Tensor | None = None, dropout: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + bias) v for q [B, H, Lq, D], k and v [B, H, Lk, D] -> [B, H, Lq, D].

    With `causal`, query i sees keys 0..i (top-left aligned, as in a decoder over one sequence).
    `bias` (additive, broadcastable to [B, H, Lq, Lk]; -inf masks) cannot be combined with `causal`.
    `dropout` drops attention probabilities (training only).
    """
    if bias is not None:
        if causal:
            raise ValueError("put the causal mask into the bias (-inf) when giving a bias")
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout)
