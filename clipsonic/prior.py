"""The DALL-E 2 diffusion prior (Ramesh et al., 2022): CLIP text -> CLIP image embedding.

Re-derived from lucidrains/DALLE2-pytorch **1.1.0** (MIT), the version whose maths LAION's
``laion/DALLE2-PyTorch`` prior was trained with; its state-dict keys (``net.*``,
``noise_scheduler.*``) load strictly. The network reads the token sequence

    [77 text-token encodings, text embedding, time embedding, noised image embedding, query]

through a causal transformer and predicts the clean image embedding (x0) at the query
position. What 1.1.0 computes, kept here on purpose:

- attention is multi-query (one key/value head shared by all query heads) with a learned
  null key/value prepended; rotary embeddings on the first min(32, dim_head) channels of q
  and k; a T5 relative-position bias computed for (n queries, n + 1 keys), so its positions
  are offset by the null key, and multiplied by 128 (the "pb-relax" factor: logits are
  divided by 128 before and multiplied after the max subtraction, bias included);
- causal masking lets query i see keys 0..i+1 of the null-prefixed sequence;
- LayerNorm without bias (gain ``g``); the final one divides by the row maximum first;
  the feed-forward is SwiGLU, with a LayerNorm after it when ``normformer``;
- padding text tokens (all-zero encodings) become learned ``null_text_embed`` rows;
- the conditioning-dropout mask is computed but never applied, so ``cond_drop_prob`` does
  not change the output (for our own training, ``drop_text`` really drops the text);
- continuous-time embeddings cast the sinusoid back to the (integer) timestep dtype;
- DDIM (`DiffusionPrior.sample_ddim`) uses the shifted cumulative alphas as 1.1.0 does.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipsonic import ops
from clipsonic.checkpoint import load_checkpoint, load_state_dict_strict, safe_torch_load, save_checkpoint
from clipsonic.config import Config, read_config_source
from clipsonic.diffusion import cosine_betas, dalle2_prior_ddim
from clipsonic.errors import CheckpointError, ConfigError

CHECKPOINT_KIND = "prior"
CHECKPOINT_VERSION = 1
PB_RELAX = 128.0


@dataclasses.dataclass(frozen=True)
class PriorNetConfig(Config):
    """``DiffusionPriorNetwork`` arguments, named as in LAION's prior_config.json (``prior.net``)."""

    dim: int = 768
    depth: int = 12
    dim_head: int = 64
    heads: int = 12
    ff_mult: float = 4.0
    norm_in: bool = False
    norm_out: bool = True
    attn_dropout: float = 0.05
    ff_dropout: float = 0.05
    final_proj: bool = True
    normformer: bool = True
    rotary_emb: bool = True
    num_timesteps: int | None = 1000
    max_text_len: int = 77
    num_time_embeds: int = 1
    num_image_embeds: int = 1
    num_text_embeds: int = 1


@dataclasses.dataclass(frozen=True)
class PriorConfig(Config):
    """The prior around the network. Preset ``paper`` is the SD prior (LAION's architecture, 12 layers)."""

    net: PriorNetConfig = PriorNetConfig()
    image_embed_dim: int = 768
    timesteps: int = 1000
    sample_timesteps: int = 64
    cond_drop_prob: float = 0.1

    PRESETS = {
        "paper": {},
        "tiny": {"net": {"dim": 64, "depth": 2, "dim_head": 32, "heads": 2, "attn_dropout": 0.0, "ff_dropout": 0.0},
                 "image_embed_dim": 64},
    }

    def __post_init__(self) -> None:
        if self.net.dim != self.image_embed_dim:
            raise ValueError(f"net.dim {self.net.dim} must equal image_embed_dim {self.image_embed_dim}")

    @property
    def image_embed_scale(self) -> float:
        return self.image_embed_dim**0.5


# ---------------------------------------------------------------- layers (1.1.0's maths, our code)


class GainNorm(nn.Module):
    """LayerNorm with a gain ``g`` and no bias, computed in float32; `stable` divides by the row max first."""

    def __init__(self, dim: int, stable: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps, self.stable = eps, stable
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        if self.stable:
            h = h / h.amax(dim=-1, keepdim=True).detach()
        var, mean = torch.var_mean(h, dim=-1, unbiased=False, keepdim=True)
        return ((h - mean) * (var + self.eps).rsqrt() * self.g.float()).to(x.dtype)


class SplitTokens(nn.Module):
    """[B, n * D] -> [B, n, D]."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.count, -1)


class Rotary(nn.Module):
    """Rotary position embedding on the first `dim` channels, interleaved channel pairs."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("freqs", 1.0 / 10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., n, d] rotated by position along n."""
        positions = torch.arange(x.shape[-2], device=x.device, dtype=self.freqs.dtype)
        angles = torch.repeat_interleave(positions[:, None] * self.freqs[None], 2, dim=-1).to(x.dtype)  # [n, rot]
        width = angles.shape[-1]
        head, tail = x[..., :width], x[..., width:]
        pairs = head.unflatten(-1, (-1, 2))
        rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
        return torch.cat([head * angles.cos() + rotated * angles.sin(), tail], dim=-1)


def relative_position_bucket(relative: torch.Tensor, buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """T5's causal buckets: exact below buckets/2, logarithmic up to max_distance."""
    n = torch.clamp(-relative, min=0)
    exact = buckets // 2
    large = exact + (torch.log(n.float() / exact) / math.log(max_distance / exact) * (buckets - exact)).long()
    return torch.where(n < exact, n, torch.clamp(large, max=buckets - 1))


class RelativePositionBias(nn.Module):
    def __init__(self, heads: int, buckets: int = 32, max_distance: int = 128) -> None:
        super().__init__()
        self.buckets, self.max_distance = buckets, max_distance
        self.relative_attention_bias = nn.Embedding(buckets, heads)

    def forward(self, queries: int, keys: int, device: torch.device) -> torch.Tensor:
        relative = torch.arange(keys, device=device)[None, :] - torch.arange(queries, device=device)[:, None]
        bias = self.relative_attention_bias(relative_position_bucket(relative, self.buckets, self.max_distance))
        return bias.permute(2, 0, 1)  # [heads, queries, keys]


class Attention(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int, dropout: float, rotary: Rotary | None) -> None:
        super().__init__()
        self.heads, self.dim_head, self.dropout = heads, dim_head, dropout
        self.norm = GainNorm(dim)
        self.null_kv = nn.Parameter(torch.randn(2, dim_head))
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim_head, bias=False)
        self.rotary_emb = rotary
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim, bias=False), GainNorm(dim))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        x = self.norm(x)
        q = self.to_q(x).view(batch, length, self.heads, self.dim_head).transpose(1, 2)  # [B, H, n, d]
        k, v = self.to_kv(x).chunk(2, dim=-1)  # each [B, n, d], shared by the heads
        if self.rotary_emb is not None:
            q, k = self.rotary_emb(q), self.rotary_emb(k)
        null_k, null_v = (t.to(x.dtype).expand(batch, 1, -1) for t in self.null_kv.unbind(0))
        k = torch.cat([null_k, k], dim=1)[:, None].expand(-1, self.heads, -1, -1)  # [B, H, n + 1, d]
        v = torch.cat([null_v, v], dim=1)[:, None].expand(-1, self.heads, -1, -1)
        # 1.1.0 adds the bias to logits already divided by 128, then multiplies by 128.
        out = ops.attention(q, k, v, bias=PB_RELAX * bias, dropout=self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).reshape(batch, length, -1))


def feed_forward(dim: int, mult: float, dropout: float, normformer: bool) -> nn.Sequential:
    inner = int(mult * dim)
    return nn.Sequential(GainNorm(dim), nn.Linear(dim, 2 * inner, bias=False), SwiGLU(),
                         GainNorm(inner) if normformer else nn.Identity(), nn.Dropout(dropout),
                         nn.Linear(inner, dim, bias=False))


class SwiGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return x * F.silu(gate)


class CausalTransformer(nn.Module):
    def __init__(self, config: PriorNetConfig) -> None:
        super().__init__()
        self.init_norm = GainNorm(config.dim) if config.norm_in else nn.Identity()
        self.rel_pos_bias = RelativePositionBias(config.heads)
        rotary = Rotary(min(32, config.dim_head)) if config.rotary_emb else None
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(config.dim, config.dim_head, config.heads, config.attn_dropout, rotary),
                           feed_forward(config.dim, config.ff_mult, config.ff_dropout, config.normformer)])
            for _ in range(config.depth))
        self.norm = GainNorm(config.dim, stable=True) if config.norm_out else nn.Identity()
        self.project_out = nn.Linear(config.dim, config.dim, bias=False) if config.final_proj else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        x = self.init_norm(x)
        bias = self.rel_pos_bias(length, length + 1, x.device).float()  # [H, n, n + 1]
        # Query i sees keys 0..i+1 of the null-prefixed sequence.
        blocked = torch.ones(length, length + 1, dtype=torch.bool, device=x.device).triu(2)
        bias = bias.masked_fill(blocked, float("-inf"))[None]
        for attention, ff in self.layers:
            x = attention(x, bias) + x
            x = ff(x) + x
        return self.project_out(self.norm(x))


def sinusoid(times: torch.Tensor, dim: int) -> torch.Tensor:
    """1.1.0's sinusoidal time embedding [B, dim]: sines then cosines, cast to the times' dtype
    (so integer timesteps truncate it, as 1.1.0 does)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=times.device) * -(math.log(10000) / (half - 1)))
    args = times[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=-1).to(times.dtype)


class SinusoidMLP(nn.Module):
    """Continuous time embedding: sinusoid, then 1.1.0's two-hidden-layer SiLU MLP (width 2 * out)."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.dim = dim
        hidden = 2 * out
        self.net = nn.Sequential(nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Identity()),
                                 nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Identity()),
                                 nn.Linear(hidden, out))

    def forward(self, times: torch.Tensor) -> torch.Tensor:
        return self.net(sinusoid(times, self.dim).float())


class PriorNetwork(nn.Module):
    """``DiffusionPriorNetwork``: predicts the clean (scaled) image embedding."""

    def __init__(self, config: PriorNetConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.dim

        def tokens(count: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(dim, dim * count) if count > 1 else nn.Identity(), SplitTokens(count))

        self.to_text_embeds = tokens(config.num_text_embeds)
        time = nn.Embedding(config.num_timesteps, dim * config.num_time_embeds) if config.num_timesteps \
            else nn.Sequential(nn.Identity(), SinusoidMLP(dim, dim * config.num_time_embeds))
        self.to_time_embeds = nn.Sequential(time, SplitTokens(config.num_time_embeds))
        self.to_image_embeds = tokens(config.num_image_embeds)
        self.learned_query = nn.Parameter(torch.randn(dim))
        self.causal_transformer = CausalTransformer(config)
        self.null_text_embed = nn.Parameter(torch.randn(1, config.max_text_len, dim))

    def forward(self, image_embed: torch.Tensor, times: torch.Tensor, text_embed: torch.Tensor,
                text_encodings: torch.Tensor, drop_text: torch.Tensor | None = None) -> torch.Tensor:
        """x0 prediction [B, dim] from the noised image embedding [B, dim] at integer `times` [B],
        the normalised text embedding [B, dim] and the token encodings [B, L, dim] (zero rows
        are padding). `drop_text` [B] (bool) hides the text of the marked samples, for our
        conditioning dropout in training; 1.1.0 itself never applies one."""
        batch, dim = image_embed.shape
        max_len = self.config.max_text_len
        encodings = text_encodings[:, :max_len]
        present = torch.any(encodings != 0, dim=-1)
        encodings = F.pad(encodings, (0, 0, 0, max_len - encodings.shape[1]))
        present = F.pad(present, (0, max_len - present.shape[1]), value=False)
        if drop_text is not None:
            present = present & ~drop_text[:, None]
            text_embed = text_embed.masked_fill(drop_text[:, None], 0.0)
        null = self.null_text_embed.to(encodings.dtype).expand(batch, -1, -1)
        encodings = torch.where(present[..., None], encodings, null)
        sequence = torch.cat([
            encodings,
            self.to_text_embeds(text_embed),
            self.to_time_embeds(times).to(encodings.dtype),
            self.to_image_embeds(image_embed),
            self.learned_query.to(encodings.dtype).expand(batch, 1, -1),
        ], dim=1)
        return self.causal_transformer(sequence)[:, -1]


class PriorSchedule(nn.Module):
    """The noise schedule as 1.1.0 stores it: float32 buffers named like its ``noise_scheduler``."""

    BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
               "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
               "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
               "p2_loss_weight")

    def __init__(self, steps: int) -> None:
        super().__init__()
        betas = cosine_betas(steps)
        abar = torch.cumprod(1 - betas, dim=0)
        abar_prev = F.pad(abar[:-1], (1, 0), value=1.0)
        variance = betas * (1 - abar_prev) / (1 - abar)
        values = {
            "betas": betas, "alphas_cumprod": abar, "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": abar.sqrt(), "sqrt_one_minus_alphas_cumprod": (1 - abar).sqrt(),
            "log_one_minus_alphas_cumprod": torch.log(1 - abar), "sqrt_recip_alphas_cumprod": (1 / abar).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1 / abar - 1).sqrt(), "posterior_variance": variance,
            "posterior_log_variance_clipped": torch.log(variance.clamp(min=1e-20)),
            "posterior_mean_coef1": betas * abar_prev.sqrt() / (1 - abar),
            "posterior_mean_coef2": (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar),
            "p2_loss_weight": torch.ones_like(betas),
        }
        for name in self.BUFFERS:
            self.register_buffer(name, values[name].float())

    @property
    def steps(self) -> int:
        return self.betas.shape[0]


class DiffusionPrior(nn.Module):
    """``DiffusionPrior`` of 1.1.0: the network, its schedule, training loss and sampling.

    Image embeddings live on the sphere of radius sqrt(dim) during diffusion (Crowson's
    scaling); `sample` returns them divided back by that scale.
    """

    def __init__(self, config: PriorConfig, origin: str = "trained") -> None:
        super().__init__()
        self.config = config
        self.origin = origin  # "laion" (pretrained, the PD variant) or "trained" by us (SD)
        self.net = PriorNetwork(config.net)
        self.noise_scheduler = PriorSchedule(config.timesteps)

    def forward(self, image_embed: torch.Tensor, text_embed: torch.Tensor, text_encodings: torch.Tensor,
                generator: torch.Generator, drop_prob: float | None = None) -> torch.Tensor:
        """Training loss: MSE of the x0 prediction for CLIP image embeddings [B, dim] (L2-normalised
        and scaled here) at uniformly drawn steps, the text hidden with probability `drop_prob`
        (default: the config's cond_drop_prob)."""
        device = image_embed.device
        batch = image_embed.shape[0]
        target = F.normalize(image_embed.float(), dim=-1) * self.config.image_embed_scale
        times = torch.randint(0, self.config.timesteps, (batch,), generator=generator).to(device)
        noise = torch.randn(target.shape, generator=generator).to(device)
        schedule = self.noise_scheduler
        noisy = schedule.sqrt_alphas_cumprod[times][:, None] * target + \
            schedule.sqrt_one_minus_alphas_cumprod[times][:, None] * noise
        drop_prob = self.config.cond_drop_prob if drop_prob is None else drop_prob
        drop = (torch.rand(batch, generator=generator) < drop_prob).to(device)
        prediction = self.net(noisy, times, F.normalize(text_embed.float(), dim=-1), text_encodings, drop_text=drop)
        return F.mse_loss(prediction.float(), target)

    @torch.no_grad()
    def sample_ddim(self, text_embed: torch.Tensor, text_encodings: torch.Tensor, steps: int | None = None,
                    eta: float = 1.0, generator: torch.Generator | None = None, noise=None) -> torch.Tensor:
        """Scaled image embeddings [B, dim] by 1.1.0's DDIM (see `clipsonic.diffusion.dalle2_prior_ddim`).

        `noise(shape)` may supply the Gaussian draws (for replaying a reference run);
        otherwise they come from `generator`.
        """
        device = text_embed.device
        if noise is None:
            def noise(shape):
                return torch.randn(shape, generator=generator).to(device)

        text = F.normalize(text_embed.float(), dim=-1)

        def predict_x0(x: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
            return self.net(x.to(self.dtype), times, text.to(self.dtype), text_encodings.to(self.dtype)).float()

        shape = (text_embed.shape[0], self.config.image_embed_dim)
        return dalle2_prior_ddim(predict_x0, self.noise_scheduler.alphas_cumprod, noise, shape,
                                 steps or self.config.sample_timesteps, eta)

    @torch.no_grad()
    def sample(self, text_embed: torch.Tensor, text_encodings: torch.Tensor, candidates: int = 2,
               steps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Image embeddings [B, dim] for B texts: `candidates` DDIM draws each (batched), keeping
        the one most cosine-similar to the text embedding (the paper's selection); no guidance."""
        batch = text_embed.shape[0]
        repeated_embed = text_embed.repeat_interleave(candidates, dim=0)
        repeated_tokens = text_encodings.repeat_interleave(candidates, dim=0)
        drawn = self.sample_ddim(repeated_embed, repeated_tokens, steps, generator=generator)
        drawn = (drawn / self.config.image_embed_scale).view(batch, candidates, -1)
        similarity = torch.einsum("brd,bd->br", F.normalize(drawn, dim=-1), F.normalize(text_embed.float(), dim=-1))
        best = similarity.argmax(dim=1)
        return drawn[torch.arange(batch, device=drawn.device), best]

    @property
    def dtype(self) -> torch.dtype:
        return self.net.learned_query.dtype

    @property
    def position_bias(self) -> torch.Tensor:
        """The T5 relative-position bias table [buckets, heads] (the attention multiplies it by 128)."""
        return self.net.causal_transformer.rel_pos_bias.relative_attention_bias.weight


def text_condition(clip, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the prior reads from CLIP: the text embedding [B, D] (L2-normalised) and the
    per-token encodings [B, 77, W] with every position after the end token zeroed (the end
    token itself is kept), as dalle2-pytorch's OpenAI CLIP adapter prepares them."""
    embedding, encodings = clip.encode_text(tokens, return_tokens=True)
    after_end = torch.cumsum(tokens == tokens.max(dim=-1, keepdim=True).values, dim=-1) > 0
    keep = F.pad(~after_end, (1, -1), value=True)  # shift right: keep the end token itself
    return F.normalize(embedding, dim=-1), encodings.masked_fill(~keep[..., None], 0.0)


# ---------------------------------------------------------------- checkpoints


_NET_KEY = "net.learned_query"


def _unwrap(payload: Any, source: Path) -> dict[str, torch.Tensor]:
    """The prior's tensors from a LAION file: a plain state dict, or one under "ema"/"model",
    possibly with a prefix (e.g. "ema_model.", "module.")."""
    candidates = []
    if isinstance(payload, dict):
        candidates = [payload[key] for key in ("ema", "model", "state_dict") if isinstance(payload.get(key), dict)]
        candidates.append(payload)
    for state in candidates:
        prefix = next((k[: -len(_NET_KEY)] for k in state if isinstance(k, str) and k.endswith(_NET_KEY)), None)
        if prefix is not None:
            return {k[len(prefix):]: v for k, v in state.items()
                    if k.startswith(prefix) and isinstance(v, torch.Tensor) and
                    k[len(prefix):].startswith(("net.", "noise_scheduler."))}
    raise CheckpointError(f"{source}: no DALL-E 2 prior weights in it (no {_NET_KEY})")


def config_from_state_dict(state: dict[str, torch.Tensor]) -> PriorConfig:
    """The architecture read off the tensor shapes (used when no prior_config.json is given)."""
    def count(pattern: str) -> int:
        return len({m.group(1) for k in state if (m := re.match(pattern, k))})

    query = state["net.causal_transformer.layers.0.0.to_q.weight"]
    dim_head = state["net.causal_transformer.layers.0.0.to_kv.weight"].shape[0] // 2
    dim = query.shape[1]
    inner = state["net.causal_transformer.layers.0.1.1.weight"].shape[0] // 2
    time_key = "net.to_time_embeds.0.weight"
    num_time = (state[time_key].shape[1] if time_key in state else
                state["net.to_time_embeds.0.1.net.2.weight"].shape[0]) // dim

    def tokens(name: str) -> int:
        key = f"net.to_{name}_embeds.0.weight"
        return state[key].shape[0] // dim if key in state else 1

    net = PriorNetConfig(
        dim=dim, depth=count(r"net\.causal_transformer\.layers\.(\d+)\."), dim_head=dim_head,
        heads=query.shape[0] // dim_head, ff_mult=inner / dim,
        norm_in="net.causal_transformer.init_norm.g" in state,
        norm_out="net.causal_transformer.norm.g" in state,
        attn_dropout=0.0, ff_dropout=0.0,
        final_proj="net.causal_transformer.project_out.weight" in state,
        normformer="net.causal_transformer.layers.0.1.3.g" in state,
        rotary_emb="net.causal_transformer.layers.0.0.rotary_emb.freqs" in state,
        num_timesteps=state[time_key].shape[0] if time_key in state else None,
        max_text_len=state["net.null_text_embed"].shape[1], num_time_embeds=num_time,
        num_image_embeds=tokens("image"), num_text_embeds=tokens("text"))
    steps = state["noise_scheduler.betas"].shape[0] if "noise_scheduler.betas" in state else 1000
    return PriorConfig(net=net, image_embed_dim=dim, timesteps=steps)


_SUPPORTED = {"predict_x_start": True, "beta_schedule": "cosine", "condition_on_text_encodings": True,
              "loss_type": "l2"}


def config_from_laion(config: str | os.PathLike | dict) -> PriorConfig:
    """A LAION ``prior_config.json`` (a path, or its parsed dict; its ``prior`` section) as a
    PriorConfig; settings this port does not implement are an error naming them."""
    data, source = read_config_source(config, "prior config")
    prior = data.get("prior", data)
    if not isinstance(prior, dict) or "net" not in prior:
        raise ConfigError(f"{source}: no prior.net section")
    for key, wanted in _SUPPORTED.items():
        if key in prior and prior[key] != wanted:
            raise ConfigError(f"{source}: prior.{key} = {prior[key]!r} is not supported (only {wanted!r})")
    known = {f.name for f in dataclasses.fields(PriorNetConfig)}
    net = {k: v for k, v in prior["net"].items() if k in known}
    unknown = sorted(set(prior["net"]) - known)
    if unknown:
        raise ConfigError(f"{source}: prior.net has settings this port does not implement: {', '.join(unknown)}")
    return PriorConfig(net=PriorNetConfig.from_dict(net), image_embed_dim=prior.get("image_embed_dim", net.get("dim", 768)),
                       timesteps=prior.get("timesteps", 1000), sample_timesteps=prior.get("sample_timesteps") or 64,
                       cond_drop_prob=prior.get("cond_drop_prob", 0.1))


@dataclasses.dataclass(frozen=True)
class PriorCheckpointInfo:
    """What our prior checkpoints record beside the weights and config (their "extra"); written and
    read only through this class. Fields absent from older files take the defaults."""

    origin: str = "trained"  # "trained" (train-prior: the SD variant) or "laion" (LAION's weights: PD)
    clip: dict | None = None  # which CLIP made the training embeddings, when trained here
    text_template: str | None = None  # the caption the labels were encoded in, when trained here

    def to_extra(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_extra(cls, extra: dict) -> "PriorCheckpointInfo":
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in extra.items() if key in names})


def load_prior(path: str | os.PathLike, config: str | os.PathLike | dict | PriorConfig | None = None,
               dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> DiffusionPrior:
    """A prior in eval mode from our checkpoint or LAION's file (plain, or under "ema"/"model";
    fp16 or fp32). `config` (LAION files only; ours carry their config): LAION's
    prior_config.json as a path or as its parsed dict, or a PriorConfig; None reads the one
    beside the file, else the architecture is read off the shapes. The noise-schedule tensors
    in the file must match the cosine schedule."""
    source = Path(path)
    payload = safe_torch_load(source)
    if isinstance(payload, dict) and str(payload.get("format", "")).startswith("clipsonic."):
        ours = load_checkpoint(source, CHECKPOINT_KIND, max_version=CHECKPOINT_VERSION)
        prior_config, state = PriorConfig.from_dict(ours["config"]), ours["state_dict"]
        origin = PriorCheckpointInfo.from_extra(ours["extra"]).origin
    else:
        origin = "laion"
        state = _unwrap(payload, source)
        beside = source.parent / "prior_config.json"
        if isinstance(config, PriorConfig):
            prior_config = config
        elif config is not None:
            prior_config = config_from_laion(config)
        else:
            prior_config = config_from_laion(beside) if beside.is_file() else config_from_state_dict(state)
    model = DiffusionPrior(prior_config, origin)
    expected = model.state_dict()
    # Half-precision files round the schedule too: compare at the precision of the file.
    tolerance = {torch.float16: (2e-3, 1e-4), torch.bfloat16: (1e-2, 1e-3)}
    for name, tensor in list(state.items()):
        if name.startswith("noise_scheduler.") and name in expected:
            rtol, atol = tolerance.get(tensor.dtype, (1e-4, 1e-6))
            if not torch.allclose(tensor.float(), expected[name], rtol=rtol, atol=atol):
                raise CheckpointError(f"{source}: {name} is not the cosine schedule this prior samples with")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    state.update({k: v for k, v in expected.items() if k.startswith("noise_scheduler.")})  # exact, once verified
    load_state_dict_strict(model, state, source)
    if dtype is not None and dtype != torch.float32:
        from clipsonic.nn import set_precision

        set_precision(model.net, dtype)
    return model.to(device).eval()


def save_prior(path: str | os.PathLike, model: DiffusionPrior) -> Path:
    """Our checkpoint of `model` (float32), remembering where its weights came from."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    return save_checkpoint(path, CHECKPOINT_KIND, model.config, state, version=CHECKPOINT_VERSION,
                           extra=PriorCheckpointInfo(origin=model.origin).to_extra())
