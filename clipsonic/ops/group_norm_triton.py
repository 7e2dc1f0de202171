"""GroupNorm + affine + h*(1+scale)+shift + SiLU in Triton, statistics in float32.

x [B, C, *spatial] is read as [B, C, S] through its strides (contiguous and channels-last
both work without a copy); a group is the cpg * S elements of `C / num_groups` neighbouring
channels of one sample. Two launch plans, both ending in one elementwise pass that applies
everything after the statistics in float32 and rounds once to x's dtype:

- fused: one program per group holds the whole group in registers (<= FUSED_LIMIT elements):
  x is read once and written once; mean and variance are exact two-pass sums over registers.
- split: for large groups (few programs would leave most of the GPU idle), each group is cut
  into chunks; a first kernel writes each chunk's (count, mean, M2) and a second merges them
  (Chan et al.'s pairwise update, stable where sum-of-squares cancels) and normalises its chunk.

Forward only: the autograd backward recomputes `group_norm_reference`, and
`clipsonic.ops.dispatch` sends calls that need gradients to the reference anyway.
Set ``TRITON_INTERPRET=1`` before the first import to run on CPU tensors (tests).
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from clipsonic.ops.group_norm_reference import group_norm_reference

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FUSED_LIMIT = 8192  # elements per group kept in one program's registers (32 KiB of fp32)
SPLIT_BLOCK = 256 if INTERPRETED else 2048  # elements per loop step of the split kernels
PROGRAMS_PER_SM = 4  # split plan: aim for this many programs per multiprocessor


@triton.jit
def _group_positions(index, SPATIAL, CPG, CHANNELS_INNER: tl.constexpr):
    """(channel within the group, spatial position) of flat group indices; channels vary
    fastest when they are contiguous in memory (channels-last), so loads stay coalesced."""
    if CHANNELS_INNER:
        channel = index % CPG
        position = index // CPG
    else:
        channel = index // SPATIAL
        position = index % SPATIAL
    return channel, position


@triton.jit
def _normalise_store(Y, W, BIAS, SCALE, SHIFT, x, mean, rstd, batch, channel, position, mask,
                     stride_yb, stride_yc, stride_ys, stride_scale_b, stride_scale_c, stride_shift_b, stride_shift_c,
                     HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr,
                     HAS_SHIFT: tl.constexpr, SILU: tl.constexpr):
    """Store y = silu?(((x - mean) * rstd * w + b) * (1 + scale) + shift) for a block of x (fp32)."""
    y = (x - mean) * rstd
    # Per-channel parameters are gathered per element: a handful of distinct addresses per
    # block, served from cache.
    if HAS_WEIGHT:
        y = y * tl.load(W + channel, mask=mask, other=1.0).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(BIAS + channel, mask=mask, other=0.0).to(tl.float32)
    if HAS_SCALE:
        y = y * (1.0 + tl.load(SCALE + batch * stride_scale_b + channel * stride_scale_c, mask=mask,
                               other=0.0).to(tl.float32))
    if HAS_SHIFT:
        y = y + tl.load(SHIFT + batch * stride_shift_b + channel * stride_shift_c, mask=mask,
                        other=0.0).to(tl.float32)
    if SILU:
        y = y * tl.sigmoid(y)
    tl.store(Y + batch * stride_yb + channel * stride_yc + position * stride_ys, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _group_norm_fused(X, Y, W, BIAS, SCALE, SHIFT,
                      stride_xb, stride_xc, stride_xs, stride_yb, stride_yc, stride_ys,
                      stride_scale_b, stride_scale_c, stride_shift_b, stride_shift_c,
                      GROUPS, SPATIAL, CPG, eps,
                      HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr,
                      HAS_SHIFT: tl.constexpr, SILU: tl.constexpr, CHANNELS_INNER: tl.constexpr,
                      BLOCK: tl.constexpr):
    """One program per (sample, group); BLOCK >= cpg * S, so the group is loaded once."""
    pid = tl.program_id(0)
    batch = (pid // GROUPS).to(tl.int64)  # int64: B*C*S can pass 2**31
    group = pid % GROUPS
    count = CPG * SPATIAL
    index = tl.arange(0, BLOCK)
    mask = index < count
    channel_in_group, position = _group_positions(index, SPATIAL, CPG, CHANNELS_INNER)
    channel = group * CPG + channel_in_group
    x = tl.load(X + batch * stride_xb + channel * stride_xc + position * stride_xs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, 0) / count
    centred = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, 0) / count + eps)
    _normalise_store(Y, W, BIAS, SCALE, SHIFT, x, mean, rstd, batch, channel, position, mask,
                     stride_yb, stride_yc, stride_ys, stride_scale_b, stride_scale_c, stride_shift_b, stride_shift_c,
                     HAS_WEIGHT, HAS_BIAS, HAS_SCALE, HAS_SHIFT, SILU)


@triton.jit
def _group_chunk_stats(X, COUNT, MEAN, M2,  # partials [B * G, SPLITS] (fp32)
                       stride_xb, stride_xc, stride_xs, GROUPS, SPATIAL, CPG, CHUNK, SPLITS,
                       CHANNELS_INNER: tl.constexpr, BLOCK: tl.constexpr):
    """(count, mean, sum of squared deviations) of chunk `program_id(1)` of group `program_id(0)`."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    batch = (pid // GROUPS).to(tl.int64)
    group = pid % GROUPS
    start = split * CHUNK
    stop = tl.minimum(start + CHUNK, CPG * SPATIAL)
    count = tl.zeros([], dtype=tl.float32)  # fp32 scalars, carried through the loop
    mean = tl.zeros([], dtype=tl.float32)
    m2 = tl.zeros([], dtype=tl.float32)
    for offset in range(start, stop, BLOCK):
        index = offset + tl.arange(0, BLOCK)
        mask = index < stop
        channel_in_group, position = _group_positions(index, SPATIAL, CPG, CHANNELS_INNER)
        x = tl.load(X + batch * stride_xb + (group * CPG + channel_in_group) * stride_xc + position * stride_xs,
                    mask=mask, other=0.0).to(tl.float32)
        block_count = tl.sum(mask.to(tl.float32), 0)
        block_mean = tl.sum(x, 0) / block_count
        centred = tl.where(mask, x - block_mean, 0.0)
        # Merge the block into the running statistics (Chan, Golub & LeVeque).
        total = count + block_count
        delta = block_mean - mean
        mean = mean + delta * (block_count / total)
        m2 = m2 + tl.sum(centred * centred, 0) + delta * delta * (count * block_count / total)
        count = total
    slot = pid * SPLITS + split
    tl.store(COUNT + slot, count)
    tl.store(MEAN + slot, mean)
    tl.store(M2 + slot, m2)


@triton.jit
def _group_norm_apply(X, Y, W, BIAS, SCALE, SHIFT, COUNT, MEAN, M2,
                      stride_xb, stride_xc, stride_xs, stride_yb, stride_yc, stride_ys,
                      stride_scale_b, stride_scale_c, stride_shift_b, stride_shift_c,
                      GROUPS, SPATIAL, CPG, CHUNK, SPLITS, eps,
                      HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr,
                      HAS_SHIFT: tl.constexpr, SILU: tl.constexpr, CHANNELS_INNER: tl.constexpr,
                      BLOCK: tl.constexpr, SPLITS_BLOCK: tl.constexpr):
    """Merge a group's chunk statistics, then normalise chunk `program_id(1)` of it."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    batch = (pid // GROUPS).to(tl.int64)
    group = pid % GROUPS
    parts = tl.arange(0, SPLITS_BLOCK)
    part_ok = parts < SPLITS
    counts = tl.load(COUNT + pid * SPLITS + parts, mask=part_ok, other=0.0)
    means = tl.load(MEAN + pid * SPLITS + parts, mask=part_ok, other=0.0)
    m2s = tl.load(M2 + pid * SPLITS + parts, mask=part_ok, other=0.0)
    count = tl.sum(counts, 0)
    mean = tl.sum(counts * means, 0) / count
    deviation = means - mean
    variance = (tl.sum(m2s, 0) + tl.sum(counts * deviation * deviation, 0)) / count
    rstd = 1.0 / tl.sqrt(variance + eps)
    start = split * CHUNK
    stop = tl.minimum(start + CHUNK, CPG * SPATIAL)
    for offset in range(start, stop, BLOCK):
        index = offset + tl.arange(0, BLOCK)
        mask = index < stop
        channel_in_group, position = _group_positions(index, SPATIAL, CPG, CHANNELS_INNER)
        channel = group * CPG + channel_in_group
        x = tl.load(X + batch * stride_xb + channel * stride_xc + position * stride_xs, mask=mask,
                    other=0.0).to(tl.float32)
        _normalise_store(Y, W, BIAS, SCALE, SHIFT, x, mean, rstd, batch, channel, position, mask,
                         stride_yb, stride_yc, stride_ys, stride_scale_b, stride_scale_c, stride_shift_b,
                         stride_shift_c, HAS_WEIGHT, HAS_BIAS, HAS_SCALE, HAS_SHIFT, SILU)


def unsupported(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                scale: torch.Tensor | None = None, shift: torch.Tensor | None = None) -> str | None:
    """Why the kernels cannot compute this call, or None when they can."""
    if x.dim() < 2 or x.shape[1] % num_groups:
        return f"x {tuple(x.shape)} is not [B, C, *spatial] with C divisible by {num_groups} groups"
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype} (float16, bfloat16 or float32)"
    batch, channels = x.shape[:2]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.shape != (channels,) or not t.is_floating_point()):
            return f"{name} {tuple(t.shape)} is not [C] = [{channels}]"
    for name, t in (("scale", scale), ("shift", shift)):
        if t is not None and (t.dim() != 2 or t.shape[1] != channels or t.shape[0] not in (1, batch)
                              or not t.is_floating_point()):
            return f"{name} {tuple(t.shape)} is not [B, C] = [{batch}, {channels}]"
    if any(t is not None and t.device != x.device for t in (weight, bias, scale, shift)):
        return "parameters on another device than x"
    if x.device.type != "cuda" and not INTERPRETED:
        return (f"Triton needs CUDA tensors, got {x.device.type} (for the CPU interpreter set "
                "TRITON_INTERPRET=1 before clipsonic.ops first uses Triton)")
    return None


def _split_plan(groups_total: int, count: int, device: torch.device) -> tuple[int, int]:
    """(splits, chunk): enough programs to fill the GPU, chunks a multiple of SPLIT_BLOCK."""
    blocks = triton.cdiv(count, SPLIT_BLOCK)
    processors = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    splits = max(1, min(blocks, triton.cdiv(PROGRAMS_PER_SM * processors, groups_total)))
    chunk = triton.cdiv(blocks, splits) * SPLIT_BLOCK
    return triton.cdiv(count, chunk), chunk


def _forward(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
             scale: torch.Tensor | None = None, shift: torch.Tensor | None = None, silu: bool = False,
             out: torch.Tensor | None = None, fused_limit: int = FUSED_LIMIT) -> torch.Tensor:
    """Launch the kernels. `out` (x's shape; contiguous or x's layout) lets tests pass a poisoned
    buffer; `fused_limit` lets them force the split plan."""
    reason = unsupported(x, num_groups, weight, bias, scale, shift)
    if reason is not None:
        raise ValueError(f"triton group_norm: {reason}")
    batch, channels = x.shape[:2]
    x3 = x.reshape(batch, channels, -1)  # [B, C, S]: a view for contiguous and channels-last x
    if out is None:
        out = torch.empty_like(x3).view(x.shape)  # keeps x3's strides, so channels-last stays so
    y3 = out.view(batch, channels, -1)
    cpg, spatial = channels // num_groups, x3.shape[2]
    count = cpg * spatial
    if out.numel() == 0:
        return out
    scale = None if scale is None else scale.expand(batch, channels)  # [1, C] broadcasts: batch stride 0
    shift = None if shift is None else shift.expand(batch, channels)
    dummy = x3  # stands in for absent tensors; their loads are compiled out
    params = [t if t is not None else dummy for t in (weight, bias, scale, shift)]
    strides = (*x3.stride(), *y3.stride(), *(scale.stride() if scale is not None else (0, 0)),
               *(shift.stride() if shift is not None else (0, 0)))
    flags = {"HAS_WEIGHT": weight is not None, "HAS_BIAS": bias is not None, "HAS_SCALE": scale is not None,
             "HAS_SHIFT": shift is not None, "SILU": silu,
             "CHANNELS_INNER": x3.stride(1) < x3.stride(2) and y3.stride(1) < y3.stride(2)}
    groups_total = batch * num_groups
    with _on_device(x.device):
        if count <= fused_limit:
            block = triton.next_power_of_2(count)
            _group_norm_fused[(groups_total,)](x3, y3, *params, *strides, num_groups, spatial, cpg, eps, **flags,
                                               BLOCK=block, num_warps=_warps(block))
            return out
        splits, chunk = _split_plan(groups_total, count, x.device)
        partials = torch.empty(3, groups_total, splits, dtype=torch.float32, device=x.device)
        _group_chunk_stats[(groups_total, splits)](x3, *partials, *x3.stride(), num_groups, spatial, cpg, chunk, splits,
                                                   CHANNELS_INNER=flags["CHANNELS_INNER"], BLOCK=SPLIT_BLOCK,
                                                   num_warps=_warps(SPLIT_BLOCK))
        _group_norm_apply[(groups_total, splits)](x3, y3, *params, *partials, *strides, num_groups, spatial, cpg, chunk,
                                                  splits, eps, **flags, BLOCK=SPLIT_BLOCK,
                                                  SPLITS_BLOCK=triton.next_power_of_2(splits),
                                                  num_warps=_warps(SPLIT_BLOCK))
    return out


def _warps(block: int) -> int:
    """About 8-16 elements per thread: enough loads in flight to cover memory latency."""
    return max(1, min(16, block // 512))


def _on_device(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class _TritonGroupNorm(torch.autograd.Function):
    """Triton forward; the backward recomputes the reference from the saved inputs."""

    @staticmethod
    def forward(ctx, x, weight, bias, scale, shift, num_groups, eps, silu):
        ctx.save_for_backward(x, weight, bias, scale, shift)
        ctx.settings = num_groups, eps, silu
        return _forward(x, num_groups, weight, bias, eps, scale, shift, silu)

    @staticmethod
    def backward(ctx, grad_out):
        inputs = [None if t is None else t.detach().requires_grad_(needed)
                  for t, needed in zip(ctx.saved_tensors, ctx.needs_input_grad[:5])]
        num_groups, eps, silu = ctx.settings
        x, weight, bias, scale, shift = inputs
        with torch.enable_grad():
            out = group_norm_reference(x, num_groups, weight, bias, eps, scale=scale, shift=shift, silu=silu)
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out))
        return (*(next(grads) if t is not None and t.requires_grad else None for t in inputs), None, None, None)


def group_norm_triton(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                      eps: float, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                      silu: bool = False) -> torch.Tensor:
    """Triton version of `group_norm_reference` for x [B, C, *spatial] in float16/bfloat16/float32:
    everything after the statistics in float32, rounded once to x's dtype; scale/shift [B, C] or [1, C].
    Differentiable: the backward recomputes the reference."""
    tensors = (x, weight, bias, scale, shift)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _TritonGroupNorm.apply(x, weight, bias, scale, shift, num_groups, eps, silu)
    return _forward(x, num_groups, weight, bias, eps, scale, shift, silu)
