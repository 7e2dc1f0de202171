"""The spectrogram denoiser: improved-diffusion's UNet (Nichol & Dhariwal, 2021) conditioned on CLIP.

Re-derived from openai/improved-diffusion's ``unet.py`` (MIT): residual blocks with
scale-shift GroupNorm conditioning, self-attention at chosen downsampling factors, 3x3
convolutions, nearest-neighbour upsampling, zero-initialised output convolutions.

Differences: the condition is a CLIP embedding — L2-normalised and scaled by sqrt(dim) (unit
variance per component, so Adam moves its projection as fast as the time embedding's; plain
unit vectors made conditioning learn an order of magnitude slower), then projected by a Linear
to the time-embedding width and added to it; a learned null embedding stands in for it when
a sample is unconditional (classifier-free guidance). GroupNorm (with its scale-shift and
SiLU fused) and attention go through `clipsonic.ops`. Attention heads have a fixed width
(64 channels) rather than a fixed count. The input is a log-mel [B, 1, n_mels, frames]; any
frame count divisible by 2 ** (levels - 1) works (8 for the paper preset), so a model trained
on 64-frame crops samples 4-s (128-frame) or longer spectrograms.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from clipsonic import ops
from clipsonic.audio import MelConfig
from clipsonic.config import Config
from clipsonic.nn import module_dtype

CHECKPOINT_KIND = "unet"
CHECKPOINT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class UNetConfig(Config):
    """Network sizes. The defaults (preset ``paper``) give ~121 M parameters."""

    in_channels: int = 1
    out_channels: int = 1
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 3
    attention_resolutions: tuple[int, ...] = (4, 8)
    head_channels: int = 64
    dropout: float = 0.1
    cond_dim: int = 768
    groups: int = 32

    PRESETS = {
        "paper": {},
        # The shipped demo UNet (~2.9 M): sized to train in minutes on a 2-core CPU.
        "demo": {"model_channels": 32, "channel_mult": (1, 2, 4), "num_res_blocks": 1, "attention_resolutions": (4,),
                 "head_channels": 32, "dropout": 0.0, "groups": 8, "cond_dim": 64},
        "tiny": {"model_channels": 32, "channel_mult": (1, 2), "num_res_blocks": 1, "attention_resolutions": (2,),
                 "head_channels": 32, "dropout": 0.0, "groups": 8},
    }

    def __post_init__(self) -> None:
        for mult in self.channel_mult:
            if (mult * self.model_channels) % self.groups:
                raise ValueError(f"{mult * self.model_channels} channels do not split into {self.groups} groups")

    @property
    def downsampling(self) -> int:
        """Input sides must be multiples of this."""
        return 2 ** (len(self.channel_mult) - 1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of (possibly fractional) timesteps t [B]: cosines then sines."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(embedding, (0, dim % 2))


class Norm(nn.GroupNorm):
    """GroupNorm in float32 through `clipsonic.ops.group_norm`, with optional scale-shift and SiLU."""

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                silu: bool = False) -> torch.Tensor:
        return ops.group_norm(x, self.num_groups, self.weight, self.bias, self.eps, scale=scale, shift=shift, silu=silu)


def _zero(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, then GroupNorm with the embedding's scale-shift, SiLU, dropout, zero-init conv."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.in_norm = Norm(groups, channels)
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, 2 * out_channels)
        self.out_norm = Norm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_conv(self.in_norm(x, silu=True))
        scale, shift = self.emb_proj(F.silu(emb)).to(h.dtype).chunk(2, dim=1)  # each [B, C]
        h = self.out_norm(h, scale=scale, shift=shift, silu=True)
        return self.skip(x) + self.out_conv(self.dropout(h))


class AttentionBlock(nn.Module):
    """Self-attention over all positions of a feature map, heads of `head_channels`, residual."""

    def __init__(self, channels: int, head_channels: int, groups: int) -> None:
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = Norm(groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = height * width
        # Token-major [B, T, C] (free for channels-last activations); the 1x1 convolutions are
        # applied as linear maps so q, k and v come out with each head's channels contiguous.
        h = self.norm(x).reshape(batch, channels, tokens).transpose(1, 2)  # [B, T, C]
        qkv = F.linear(h, self.qkv.weight[:, :, 0], self.qkv.bias)  # [B, T, 3C]
        # Channels are head-major, then q/k/v, then within-head: improved-diffusion's order.
        qkv = qkv.view(batch, tokens, self.heads, 3, channels // self.heads)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each [B, heads, T, ch]
        out = ops.attention(q, k, v).transpose(1, 2).reshape(batch, tokens, channels)  # [B, T, C]
        out = F.linear(out, self.proj_out.weight[:, :, 0], self.proj_out.bias)
        return x + out.transpose(1, 2).reshape(batch, channels, height, width)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Stage(nn.ModuleList):
    """A sequence of layers that all take (x, emb)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        base, groups = config.model_channels, config.groups
        emb_channels = 4 * base
        self.time_embed = nn.Sequential(nn.Linear(base, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels))
        self.cond_proj = nn.Linear(config.cond_dim, emb_channels)
        self.null_embedding = nn.Parameter(torch.randn(config.cond_dim))  # the scale of a real condition

        self.input_blocks = nn.ModuleList([Stage([nn.Conv2d(config.in_channels, base, 3, padding=1)])])
        skip_channels, channels, factor = [base], base, 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers = [ResBlock(channels, emb_channels, mult * base, config.dropout, groups)]
                channels = mult * base
                if factor in config.attention_resolutions:
                    layers.append(AttentionBlock(channels, config.head_channels, groups))
                self.input_blocks.append(Stage(layers))
                skip_channels.append(channels)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(Stage([Downsample(channels)]))
                skip_channels.append(channels)
                factor *= 2
        self.middle_block = Stage([ResBlock(channels, emb_channels, channels, config.dropout, groups),
                                   AttentionBlock(channels, config.head_channels, groups),
                                   ResBlock(channels, emb_channels, channels, config.dropout, groups)])
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for index in range(config.num_res_blocks + 1):
                layers = [ResBlock(channels + skip_channels.pop(), emb_channels, mult * base, config.dropout, groups)]
                channels = mult * base
                if factor in config.attention_resolutions:
                    layers.append(AttentionBlock(channels, config.head_channels, groups))
                if level and index == config.num_res_blocks:
                    layers.append(Upsample(channels))
                    factor //= 2
                self.output_blocks.append(Stage(layers))
        self.out_norm = Norm(groups, channels)
        self.out_conv = _zero(nn.Conv2d(channels, config.out_channels, 3, padding=1))

    @property
    def dtype(self) -> torch.dtype:
        return module_dtype(self)

    def embed(self, t: torch.Tensor, cond: torch.Tensor | None, drop: torch.Tensor | None) -> torch.Tensor:
        """Time plus condition embedding [B, 4 * model_channels]; `drop` [B] (bool) selects the null condition."""
        batch = t.shape[0]
        null = self.null_embedding.float().expand(batch, -1)
        if cond is None:
            condition = null
        else:
            condition = F.normalize(cond.float(), dim=-1) * math.sqrt(self.config.cond_dim)
            if drop is not None:
                condition = torch.where(drop[:, None], null, condition)
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(self.dtype))
        return emb + self.cond_proj(condition.to(self.dtype))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise [B, C, H, W] for noisy input x [B, C, H, W] at timesteps t [B].

        `cond` [B, cond_dim] is a CLIP embedding (None: unconditional for the whole batch);
        `drop` [B] bool replaces the condition of the marked samples with the null embedding.
        """
        multiple = self.config.downsampling
        if x.dim() != 4 or x.shape[-1] % multiple or x.shape[-2] % multiple:
            raise ValueError(f"UNet input must be [B, C, H, W] with H and W multiples of {multiple}, "
                             f"got {tuple(x.shape)}")
        emb = self.embed(t, cond, drop)
        h = x.to(self.dtype)
        skips = []
        for stage in self.input_blocks:
            h = stage(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out_conv(self.out_norm(h, silu=True)).float()


@dataclasses.dataclass(frozen=True)
class MelNormalization(Config):
    """Affine map of log-mel values onto [-1, 1], fixed per checkpoint."""

    low: float
    high: float

    def to_unit(self, log_mel: torch.Tensor) -> torch.Tensor:
        return 2 * (log_mel - self.low) / (self.high - self.low) - 1

    def from_unit(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 1) / 2 * (self.high - self.low) + self.low


@dataclasses.dataclass(frozen=True)
class SpectrogramModel:
    """A trained UNet with what sampling needs to know about it."""

    unet: UNet
    mel_norm: MelNormalization
    mel_config: MelConfig
    condition: str  # "image" (CLIPSonic), "text" (CLIP-TTA), "clap-text" (CLAP-TTA): variants.CONDITIONS
    embed_dim: int
    diffusion_steps: int
    clip: dict | None  # which CLIP produced the training embeddings, when known
    prediction: str = "eps"  # what the UNet outputs (`clipsonic.diffusion.Prediction`)


@dataclasses.dataclass(frozen=True)
class UNetCheckpointInfo:
    """What a UNet checkpoint records beside the weights and config (its "extra"): what sampling
    needs to know about the model. Written (`DiffusionTask`) and read (`load_unet`) only through
    this class."""

    mel_norm: MelNormalization
    mel_config: MelConfig
    condition: str  # "image" (CLIPSonic), "text" (CLIP-TTA), "clap-text" (CLAP-TTA): variants.CONDITIONS
    embed_dim: int
    diffusion_steps: int
    clip: dict | None = None  # which CLIP produced the training embeddings, when known
    training: dict | None = None  # the task's training settings (crop, condition dropout, ...)
    prediction: str = "eps"  # noise or velocity (`clipsonic.diffusion.Prediction`); older checkpoints: noise

    def to_extra(self) -> dict:
        return {"mel_norm": self.mel_norm.to_dict(), "mel_config": self.mel_config.to_dict(),
                "condition": self.condition, "embed_dim": self.embed_dim, "diffusion_steps": self.diffusion_steps,
                "clip": self.clip, "training": self.training, "prediction": self.prediction}

    @classmethod
    def from_extra(cls, extra: dict) -> "UNetCheckpointInfo":
        return cls(MelNormalization.from_dict(extra["mel_norm"]), MelConfig.from_dict(extra["mel_config"]),
                   extra["condition"], int(extra["embed_dim"]), int(extra["diffusion_steps"]), extra.get("clip"),
                   extra.get("training"), extra.get("prediction", "eps"))


def load_unet(path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> SpectrogramModel:
    """The EMA weights of a `clipsonic train` checkpoint, ready to sample."""
    from clipsonic.checkpoint import load_checkpoint, load_state_dict_strict
    from clipsonic.nn import set_precision

    payload = load_checkpoint(path, CHECKPOINT_KIND, max_version=CHECKPOINT_VERSION)
    extra = payload["extra"]
    unet = UNet(UNetConfig.from_dict(payload["config"]))
    load_state_dict_strict(unet, payload["state_dict"], path)
    set_precision(unet, dtype or torch.float32)
    unet = unet.to(device).eval()
    if unet.dtype != torch.float32 and torch.device(device).type == "cpu":
        unet = unet.to(memory_format=torch.channels_last)  # oneDNN's fast layout for bf16 convolutions
    info = UNetCheckpointInfo.from_extra(extra)
    return SpectrogramModel(unet=unet, mel_norm=info.mel_norm, mel_config=info.mel_config, condition=info.condition,
                            embed_dim=info.embed_dim, diffusion_steps=info.diffusion_steps, clip=info.clip,
                            prediction=info.prediction)
