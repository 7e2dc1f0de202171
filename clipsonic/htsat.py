"""HTS-AT (Chen et al., 2022): the Swin-Transformer audio encoder of LAION-CLAP.

Re-derived from LAION-CLAP's ``clap_module/htsat.py`` and ``feature_fusion.py`` (laion_clap
1.1.7, CC0), themselves built on microsoft/Swin-Transformer (MIT); the parameters keep their
key names (``bn0``, ``patch_embed.proj``, ``layers.N.blocks.M.attn.qkv``, ...) under CLAP's
``audio_branch.`` prefix. What the encoder computes from a log-mel [T = 1001, F = 64]:

- ``bn0``: BatchNorm over the mel bins (running statistics; the model is always in eval mode);
- the fold (``reshape_wav2img``): time stretched to ``spec_size * freq_ratio`` = 1024 frames by
  bicubic interpolation with aligned corners, then cut into ``freq_ratio`` = 4 pieces of 256
  frames stacked along frequency, so the image [256, 256] has the mel bins of piece r in rows
  r*64 .. r*64+63 and time in columns;
- a 4x4 patch embedding (conv, then LayerNorm) -> a 64 x 64 grid of 96-d tokens;
- four Swin stages (depths 2, 2, 6, 2; 4, 8, 16, 32 heads; widths 96 .. 768): window attention
  in 8 x 8 windows with a learned relative-position bias, every second block on windows shifted
  by 4 (cross-window pairs masked with -100, as upstream, not -inf), a GELU MLP of ratio 4;
  2x2 patch merging between stages; the last stage, whose 8 x 8 grid is one window, never
  shifts;
- the final LayerNorm and the mean over the 64 tokens: the 768-d ``embedding`` that CLAP
  projects. (Upstream's regrouping of tokens before that mean only reorders them; its tagging
  head, ``tscam_conv`` and ``head``, does not feed the embedding and is not built here.)

Feature fusion (``aff_2d``, the fusion checkpoints) for clips longer than 10 s: the input has
four channels, a global view (the whole clip's mel shrunk to 1001 frames) and three 10-s
chunks. The global view takes the patch embedding; each chunk goes through ``mel_conv2d``
(kernel and stride 4 x 12) to a 64 x 21 grid, the three grids are laid side by side along
time (63 columns) and zero-padded to 64, and attentional feature fusion (AFF, Dai et al.,
2021) mixes them into the global grid: ``2 x w + 2 r (1 - w)`` with w a sigmoid of local
(1x1 convolutions) plus global (pooled) attention on ``x + r``. Clips of 10 s or less use
channel 0 only, exactly as a non-fusion model does.

Differences from upstream: dropout and drop-path are absent (they are identities in eval
mode); attention runs through ``scaled_dot_product_attention`` with the bias and the shift
mask added to the logits; LayerNorm and BatchNorm compute in float32 whatever the model's
dtype; the fold runs in float32.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from clipsonic.config import Config
from clipsonic.nn import LayerNorm

SHIFT_MASK_VALUE = -100.0  # what upstream adds to logits of token pairs from different shifted regions
FUSION_CHUNKS = 3
AFF_REDUCTION = 4


@dataclasses.dataclass(frozen=True)
class HTSATConfig(Config):
    """The audio encoder's sizes. The defaults (preset ``htsat-tiny``) are LAION-CLAP's HTSAT-tiny."""

    mel_bins: int = 64
    spec_size: int = 256
    patch_size: int = 4
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 8
    mlp_ratio: float = 4.0
    fusion: bool = True

    PRESETS = {
        "htsat-tiny": {},
        "tiny": {"embed_dim": 16, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4)},
    }

    def __post_init__(self) -> None:
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} differ in length")
        if self.spec_size % self.mel_bins:
            raise ValueError(f"spec_size {self.spec_size} is not a multiple of mel_bins {self.mel_bins}")
        for stage, heads in enumerate(self.num_heads):
            if self.embed_dim * 2**stage % heads:
                raise ValueError(f"stage {stage} width {self.embed_dim * 2**stage} is not divisible by {heads} heads")

    @property
    def freq_ratio(self) -> int:
        return self.spec_size // self.mel_bins

    @property
    def num_features(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)


class BatchNorm2d(nn.BatchNorm2d):
    """Eval-mode BatchNorm computed in float32; the result takes the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.batch_norm(x.float(), self.running_mean.float(), self.running_var.float(), self.weight.float(),
                           self.bias.float(), training=False, eps=self.eps)
        return out.to(x.dtype)


def _window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] -> [B, windows, window * window, C], windows in row-major order."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    # B h wh w ww C -> B (h w) (wh ww) C
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, -1, window * window, channels)


def _window_merge(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `_window_partition`: [B, windows, window * window, C] -> [B, H, W, C]."""
    batch, channels = windows.shape[0], windows.shape[-1]
    x = windows.view(batch, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height, width, channels)  # B h w wh ww C -> B (h wh) (w ww) C


def _relative_position_index(window: int) -> torch.Tensor:
    """[N, N] (N = window^2): the bias-table row for each (query, key) pair of a window."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])  # [2, N]
    offset = coords[:, :, None] - coords[:, None, :] + (window - 1)  # [2, N, N], each in 0 .. 2*window - 2
    return offset[0] * (2 * window - 1) + offset[1]


def _shift_mask(resolution: int, window: int, shift: int) -> torch.Tensor:
    """[windows, N, N]: 0 where two tokens of a shifted window come from the same region of the
    unshifted grid, -100 where the cyclic shift brought them together from opposite edges."""
    regions = torch.zeros(1, resolution, resolution, 1)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for row, rows in enumerate(bounds):
        for col, cols in enumerate(bounds):
            regions[:, rows, cols, :] = row * len(bounds) + col
    labels = _window_partition(regions, window)[0, :, :, 0]  # [windows, N]
    different = labels[:, None, :] != labels[:, :, None]
    return torch.where(different, SHIFT_MASK_VALUE, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with Swin's relative-position bias."""

    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", _relative_position_index(window), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """`x` [B, windows, N, C], `mask` [windows, N, N] or None -> [B, windows, N, C]."""
        batch, windows, tokens, dim = x.shape
        qkv = self.qkv(x).view(batch, windows, tokens, 3, self.heads, dim // self.heads)
        # B nW N 3 H D -> 3 B (nW H) N D: every (window, head) pair attends as one "head".
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, batch, windows * self.heads, tokens, -1)
        bias = self.relative_position_bias_table[self.relative_position_index].permute(2, 0, 1)  # [H, N, N]
        bias = bias[None] if mask is None else bias[None] + mask[:, None]  # [1 or nW, H, N, N]
        # nW H N N -> 1 (nW H) N N, the layout of q
        bias = bias.expand(windows, -1, -1, -1).reshape(1, windows * self.heads, tokens, tokens)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        out = out.view(batch, windows, self.heads, tokens, -1).transpose(2, 3)  # B nW H N D -> B nW N H D
        return self.proj(out.reshape(batch, windows, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, resolution: int, heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        if resolution <= window:  # one window covers the grid: upstream neither partitions nor shifts
            window, shift = resolution, 0
        self.resolution, self.window, self.shift = resolution, window, shift
        self.norm1 = LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", _shift_mask(resolution, window, shift) if shift else None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L = resolution^2, C] -> the same shape."""
        batch, length, dim = x.shape
        grid = self.norm1(x).view(batch, self.resolution, self.resolution, dim)
        if self.shift:
            grid = torch.roll(grid, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(_window_partition(grid, self.window), self.attn_mask)
        grid = _window_merge(windows, self.window, self.resolution, self.resolution)
        if self.shift:
            grid = torch.roll(grid, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + grid.reshape(batch, length, dim)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbouring tokens concatenated (4C), normalised, projected to 2C."""

    def __init__(self, dim: int, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.norm = LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, R*R, C] -> [B, R*R/4, 2C]."""
        batch, _, dim = x.shape
        grid = x.view(batch, self.resolution, self.resolution, dim)
        # The order of the four neighbours is upstream's: (0,0), (1,0), (0,1), (1,1).
        merged = torch.cat([grid[:, 0::2, 0::2], grid[:, 1::2, 0::2], grid[:, 0::2, 1::2], grid[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(merged.view(batch, -1, 4 * dim)))


class Stage(nn.Module):
    """Upstream's ``BasicLayer``: Swin blocks, every second one shifted, then patch merging."""

    def __init__(self, config: HTSATConfig, index: int, resolution: int) -> None:
        super().__init__()
        dim, window = config.embed_dim * 2**index, config.window_size
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, config.num_heads[index], window, window // 2 if block % 2 else 0,
                      config.mlp_ratio)
            for block in range(config.depths[index]))
        self.downsample = PatchMerging(dim, resolution) if index < len(config.depths) - 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


def _conv_bn(channels_in: int, channels_out: int) -> list[nn.Module]:
    return [nn.Conv2d(channels_in, channels_out, kernel_size=1), BatchNorm2d(channels_out)]


class AttentionalFeatureFusion(nn.Module):
    """Upstream's ``AFF(type="2D")``; the Sequential indices are its key names."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = channels // AFF_REDUCTION
        self.local_att = nn.Sequential(*_conv_bn(channels, inner), nn.ReLU(), *_conv_bn(inner, channels))
        self.global_att = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_conv_bn(channels, inner), nn.ReLU(),
                                        *_conv_bn(inner, channels))

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """`x` (global) and `residual` (local) [B, C, H, W] -> [B, C, H, W]. (Upstream doubles a
        batch of one for training-mode BatchNorm; in eval mode that changes nothing.)"""
        mixed = x + residual
        weight = torch.sigmoid(self.local_att(mixed) + self.global_att(mixed))
        return 2 * x * weight + 2 * residual * (1 - weight)


class PatchEmbed(nn.Module):
    def __init__(self, config: HTSATConfig) -> None:
        super().__init__()
        patch, dim = config.patch_size, config.embed_dim
        self.proj = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.norm = LayerNorm(dim)
        if config.fusion:
            wide = (patch, patch * FUSION_CHUNKS)
            self.mel_conv2d = nn.Conv2d(1, dim, kernel_size=wide, stride=wide)
            self.fusion_model = AttentionalFeatureFusion(dim)

    def forward(self, image: torch.Tensor, fused: bool) -> torch.Tensor:
        """`image` [B, C, S, S] (channel 0 the global view; with `fused`, 1..3 the chunks) -> [B, (S/p)^2, E]."""
        x = self.proj(image[:, :1])  # [B, E, S/p, S/p]
        if fused:
            batch, chunks, size, _ = image.shape
            local = self.mel_conv2d(image[:, 1:].reshape(batch * (chunks - 1), 1, size, size))  # [B*3, E, S/p, S/3p]
            local = local.view(batch, chunks - 1, *local.shape[1:]).permute(0, 2, 3, 1, 4)  # B 3 E h w -> B E h 3 w
            local = local.flatten(3)  # [B, E, S/p, 3 * (S/3p)]: the chunks side by side along time
            local = F.pad(local, (0, x.shape[-1] - local.shape[-1]))
            x = self.fusion_model(x, local)
        return self.norm(x.flatten(2).transpose(1, 2))  # B E h w -> B (h w) E


class HTSAT(nn.Module):
    """The audio encoder; `forward` maps log-mels [B, C, T, F] to embeddings [B, num_features]."""

    def __init__(self, config: HTSATConfig) -> None:
        super().__init__()
        self.config = config
        self.bn0 = BatchNorm2d(config.mel_bins)
        self.patch_embed = PatchEmbed(config)
        grid = config.spec_size // config.patch_size
        self.layers = nn.ModuleList(Stage(config, index, grid // 2**index) for index in range(len(config.depths)))
        self.norm = LayerNorm(config.num_features)

    def fold(self, mel: torch.Tensor) -> torch.Tensor:
        """Upstream's ``reshape_wav2img``: [B, C, T, F] (T <= spec_size * freq_ratio) -> [B, C, S, S]."""
        ratio, size = self.config.freq_ratio, self.config.spec_size
        frames, bins = mel.shape[-2:]
        if frames > size * ratio or bins != self.config.mel_bins:
            raise ValueError(f"HTSAT takes at most {size * ratio} frames of {self.config.mel_bins} mel bins, "
                             f"got {frames} x {bins}")
        if frames < size * ratio:
            mel = F.interpolate(mel, size=(size * ratio, bins), mode="bicubic", align_corners=True)
        batch, channels = mel.shape[:2]
        x = mel.transpose(2, 3).reshape(batch, channels, bins, ratio, size)  # B C F (r S)
        return x.transpose(2, 3).reshape(batch, channels, ratio * bins, size)  # B C r F S -> B C (r F) S

    def forward(self, mel: torch.Tensor, fused: bool = False) -> torch.Tensor:
        """`mel` [B, C, T, F] log-mels (float32): C = 1, or 4 with `fused` (global view, then the
        three chunks) -> [B, num_features] float32."""
        if fused and (not self.config.fusion or mel.shape[1] != 1 + FUSION_CHUNKS):
            raise ValueError(f"fused input needs a fusion model and {1 + FUSION_CHUNKS} channels, "
                             f"got {mel.shape[1]} (fusion={self.config.fusion})")
        x = self.bn0(mel.float().transpose(1, 3)).transpose(1, 3)  # normalise each mel bin: B C T F -> B F T C and back
        x = self.patch_embed(self.fold(x).to(self.patch_embed.proj.weight.dtype), fused)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x).float().mean(dim=1)
