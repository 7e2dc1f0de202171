"""Flash-style attention forward in Triton: q, k, v tiles in SRAM, online softmax, fp32 accumulation.

Written from the FlashAttention papers (Dao et al., 2022; 2023): each program owns BLOCK_M
queries of one (batch, head), walks the keys BLOCK_N at a time, and keeps a running row
maximum `m`, a running denominator `l` and an unnormalised output `acc`; earlier blocks are
rescaled by exp(m_old - m_new) whenever the maximum grows, so the [Lq, Lk] score matrix never
exists in memory. Exponentials are base 2 with log2(e) folded into the scale.

Supports q [B, H, Lq, D], k and v [B, H, Lk, D] (any strides), D <= 128 (the head-dim block is
padded to a power of two and masked), any Lq and Lk, float16/bfloat16/float32, causal with the
reference's top-left alignment (query i sees keys 0..i, as torch's SDPA with ``is_causal``).
The backward recomputes with the reference (`attention_reference`): training calls that let
`clipsonic.ops.attention` choose never come here (see `clipsonic.ops.dispatch`).

Importing this module imports Triton; `clipsonic.ops.dispatch` imports it only when needed.
Set ``TRITON_INTERPRET=1`` before the first import to run the kernel on CPU tensors (tests).
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
import triton
import triton.language as tl

from clipsonic.ops.attention_reference import attention_reference

# Fixed when the kernel is defined: triton.jit builds an interpreted function only if the
# variable is set at that moment.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
MAX_HEAD_DIM = 128
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2_E = 1.4426950408889634


@triton.jit
def _attention_forward(Q, K, V, O,  # pointers to q/k [B, H, L, D], v [B, H, Lk, D], out [B, H, Lq, D]
                       stride_qb, stride_qh, stride_qm, stride_qd,
                       stride_kb, stride_kh, stride_kn, stride_kd,
                       stride_vb, stride_vh, stride_vn, stride_vd,
                       stride_ob, stride_oh, stride_om, stride_od,
                       HEADS, LQ, LK, HEAD_DIM, qk_scale,  # qk_scale = log2(e) / sqrt(D)
                       CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    # int64 before multiplying by strides: B*H*L*D can pass 2**31 elements.
    batch = (pid_bh // HEADS).to(tl.int64)
    head = (pid_bh % HEADS).to(tl.int64)
    q_base = Q + batch * stride_qb + head * stride_qh
    k_base = K + batch * stride_kb + head * stride_kh
    v_base = V + batch * stride_vb + head * stride_vh
    o_base = O + batch * stride_ob + head * stride_oh

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < LQ
    dim_ok = dims < HEAD_DIM  # the padded head-dim lanes load zeros and are never stored
    q = tl.load(q_base + rows[:, None] * stride_qm + dims[None, :] * stride_qd,
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    if UPCAST:  # the interpreter multiplies with numpy, which has no bfloat16
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Key 0 is visible to every row (causal or not), so no row's maximum stays -inf after
    # the first block and exp2(-inf - m) is a clean 0 for masked scores.
    end = LK
    if CAUSAL:  # keys past this block's last query are masked for all its rows
        end = tl.minimum(LK, (pid_m + 1) * BLOCK_M)
    for start in range(0, end, BLOCK_N):
        keys = start + cols
        key_ok = keys < LK
        k = tl.load(k_base + keys[:, None] * stride_kn + dims[None, :] * stride_kd,
                    mask=key_ok[:, None] & dim_ok[None, :], other=0.0)
        v = tl.load(v_base + keys[:, None] * stride_vn + dims[None, :] * stride_vd,
                    mask=key_ok[:, None] & dim_ok[None, :], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N]
        visible = key_ok[None, :]
        if CAUSAL:
            visible = visible & (keys[None, :] <= rows[:, None])
        scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        alpha = tl.exp2(m_i - m_new)  # rescales what earlier blocks accumulated
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        # p is rounded to v's dtype as tensor cores take it; accumulation stays fp32.
        p = p.to(v.dtype)
        if UPCAST:
            p = p.to(tl.float32)
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]
    tl.store(o_base + rows[:, None] * stride_om + dims[None, :] * stride_od, out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & dim_ok[None, :])


# The interpreter runs one fixed configuration (autotuning would time numpy); on a GPU a few
# tile shapes are tried once per (Lq, Lk, head-dim block, causal, dtype).
INTERPRETER_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32}
GPU_CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
               for m, n, w, s in ((128, 64, 4, 3), (128, 128, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3), (64, 32, 4, 2))]
_attention_forward_tuned = None if INTERPRETED else triton.autotune(
    configs=GPU_CONFIGS, key=["LQ", "LK", "BLOCK_D", "CAUSAL"])(_attention_forward)


def unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the kernel cannot compute this call, or None when it can."""
    if not (q.dim() == k.dim() == v.dim() == 4):
        return "q, k and v must be [B, H, L, D]"
    if q.shape[:2] != k.shape[:2] or k.shape != v.shape or q.shape[-1] != k.shape[-1]:
        return f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"head dim {q.shape[-1]} > {MAX_HEAD_DIM}"
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtypes {q.dtype}, {k.dtype}, {v.dtype} (one of float16/bfloat16/float32 for all three)"
    if not (q.device == k.device == v.device):
        return "q, k and v are on different devices"
    if q.device.type != "cuda" and not INTERPRETED:
        return (f"Triton needs CUDA tensors, got {q.device.type} (for the CPU interpreter set "
                "TRITON_INTERPRET=1 before clipsonic.ops first uses Triton)")
    return None


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the kernel; `out` ([B, H, Lq, D], any strides) lets tests pass a poisoned buffer."""
    reason = unsupported(q, k, v)
    if reason is not None:
        raise ValueError(f"triton attention: {reason}")
    batch, heads, queries, dim = q.shape
    keys = k.shape[2]
    if out is None:
        out = torch.empty(batch, heads, queries, dim, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if keys == 0:  # no key to attend to: whatever the reference defines for that
        return out.copy_(attention_reference(q, k, v, causal=causal))
    args = (q, k, v, out, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            heads, queries, keys, dim, LOG2_E / math.sqrt(dim))
    meta = {"CAUSAL": causal, "BLOCK_D": max(16, triton.next_power_of_2(dim)),  # tl.dot needs K >= 16
            "UPCAST": INTERPRETED, "DOT_PRECISION": "ieee" if q.dtype == torch.float32 else "tf32"}
    with _on_device(q.device):
        if INTERPRETED:
            grid = (triton.cdiv(queries, INTERPRETER_CONFIG["BLOCK_M"]), batch * heads)
            _attention_forward[grid](*args, **meta, **INTERPRETER_CONFIG)
        else:
            def grid(config):
                return triton.cdiv(queries, config["BLOCK_M"]), batch * heads
            _attention_forward_tuned[grid](*args, **meta)
    return out


def _on_device(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class _TritonAttention(torch.autograd.Function):
    """Triton forward; the backward recomputes the reference from the saved q, k, v."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
        ctx.save_for_backward(q, k, v)
        ctx.causal = causal
        return _forward(q, k, v, causal)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        inputs = [t.detach().requires_grad_(needed) for t, needed in zip(ctx.saved_tensors, ctx.needs_input_grad[:3])]
        with torch.enable_grad():
            out = attention_reference(*inputs, causal=ctx.causal)
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out))
        return (*(next(grads) if t.requires_grad else None for t in inputs), None)


def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for q [B, H, Lq, D], k and v [B, H, Lk, D] -> [B, H, Lq, D] (contiguous).

    Same convention as `attention_reference` (causal: query i sees keys 0..i). Differentiable:
    the backward recomputes the reference.
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return _TritonAttention.apply(q, k, v, causal)
    return _forward(q, k, v, causal)
