"""BigVGAN (Lee et al., 2023): the neural vocoder that turns log-mels into waveforms.

Re-derived from NVIDIA/BigVGAN (MIT): a pre-convolution, transposed-convolution upsamplers,
each followed by anti-aliased multi-periodicity (AMP) residual blocks whose Snake/SnakeBeta
activations (log-scale parameters) run at twice the sample rate between Kaiser-sinc filters,
then an anti-aliased activation, a post-convolution and tanh (or clamping).

NVIDIA's checkpoints (``{"generator": state_dict}`` with its ``config.json``, any sample
rate) load strictly under their own key names, with weight normalisation stored either as
``weight_g``/``weight_v`` or as ``parametrizations.weight.original0/1``; it is folded into
plain weights for inference. The activation goes through `clipsonic.ops.anti_alias_activation`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import nn

from clipsonic import ops
from clipsonic.audio import MelConfig
from clipsonic.checkpoint import load_checkpoint, load_state_dict_strict, safe_torch_load, save_checkpoint
from clipsonic.config import Config, read_config_source
from clipsonic.errors import CheckpointError, ConfigError
from clipsonic.ops.anti_alias_reference import kaiser_sinc_filter

CHECKPOINT_KIND = "bigvgan"
CHECKPOINT_VERSION = 1
FILTER_TAPS = 12


@dataclasses.dataclass(frozen=True)
class BigVGANConfig(Config):
    """Generator settings, named as in NVIDIA's config.json. Defaults: the paper's 16 kHz / 64-mel /
    hop-512 model at 512 channels (preset ``paper``; ``paper-large`` has 1536)."""

    resblock: str = "1"
    upsample_rates: tuple[int, ...] = (8, 8, 4, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 8, 4)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    activation: str = "snakebeta"
    snake_logscale: bool = True
    use_tanh_at_final: bool = True
    use_bias_at_final: bool = True
    num_mels: int = 64
    sampling_rate: int = 16000
    n_fft: int = 2048
    hop_size: int = 512
    win_size: int = 2048
    fmin: float = 0.0
    fmax: float | None = 8000.0

    PRESETS = {
        "paper": {},
        "paper-large": {"upsample_initial_channel": 1536},
        "tiny": {"upsample_initial_channel": 32, "resblock_kernel_sizes": (3,), "resblock_dilation_sizes": ((1, 3),)},
    }

    def __post_init__(self) -> None:
        if self.resblock not in ("1", "2"):
            raise ValueError(f"resblock must be '1' or '2', got {self.resblock!r}")
        if self.activation not in ("snake", "snakebeta"):
            raise ValueError(f"activation must be 'snake' or 'snakebeta', got {self.activation!r}")
        product = 1
        for rate in self.upsample_rates:
            product *= rate
        if product != self.hop_size:
            raise ValueError(f"upsample rates multiply to {product}, not the hop size {self.hop_size}")

    @property
    def mel_config(self) -> MelConfig:
        return MelConfig(sample_rate=self.sampling_rate, n_fft=self.n_fft, win_size=self.win_size,
                         hop_size=self.hop_size, n_mels=self.num_mels, fmin=self.fmin, fmax=self.fmax)


class Lowpass(nn.Module):
    """Holds the down-sampling filter as NVIDIA's checkpoints name it (``downsample.lowpass.filter``)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("filter", kaiser_sinc_filter(0.25, 0.3, FILTER_TAPS).view(1, 1, -1))


class Downsample(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lowpass = Lowpass()


class Upsample(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("filter", kaiser_sinc_filter(0.25, 0.3, FILTER_TAPS).view(1, 1, -1))


class SnakeParameters(nn.Module):
    def __init__(self, channels: int, beta: bool, logscale: bool) -> None:
        super().__init__()
        self.logscale = logscale
        start = torch.zeros(channels) if logscale else torch.ones(channels)
        self.alpha = nn.Parameter(start.clone())
        self.beta = nn.Parameter(start.clone()) if beta else None

    def linear(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.logscale:
            return self.alpha, self.beta
        return self.alpha.exp(), None if self.beta is None else self.beta.exp()


class AntiAliasedSnake(nn.Module):
    """2x upsample -> Snake(Beta) -> 2x downsample (NVIDIA's Activation1d)."""

    def __init__(self, channels: int, config: BigVGANConfig) -> None:
        super().__init__()
        self.act = SnakeParameters(channels, config.activation == "snakebeta", config.snake_logscale)
        self.upsample = Upsample()
        self.downsample = Downsample()
        self.impl: str | None = None  # None: the fastest kernel that applies (see clipsonic.ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, beta = self.act.linear()
        return ops.anti_alias_activation(x, self.upsample.filter, self.downsample.lowpass.filter, alpha, beta,
                                         impl=self.impl)


def _padding(kernel: int, dilation: int) -> int:
    return (kernel * dilation - dilation) // 2


class AMPBlock(nn.Module):
    """Residual units: activation, dilated conv (and, for type "1", activation and a dilation-1 conv)."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...], config: BigVGANConfig) -> None:
        super().__init__()
        self.double = config.resblock == "1"

        def conv(dilation: int) -> nn.Conv1d:
            return nn.Conv1d(channels, channels, kernel, dilation=dilation, padding=_padding(kernel, dilation))

        if self.double:
            self.convs1 = nn.ModuleList(conv(d) for d in dilations)
            self.convs2 = nn.ModuleList(conv(1) for _ in dilations)
        else:
            self.convs = nn.ModuleList(conv(d) for d in dilations)
        layers = len(dilations) * (2 if self.double else 1)
        self.activations = nn.ModuleList(AntiAliasedSnake(channels, config) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.double:
            for first, second, act1, act2 in zip(self.convs1, self.convs2, self.activations[::2], self.activations[1::2]):
                x = x + second(act2(first(act1(x))))
        else:
            for conv, act in zip(self.convs, self.activations):
                x = x + conv(act(x))
        return x


class BigVGAN(nn.Module):
    def __init__(self, config: BigVGANConfig) -> None:
        super().__init__()
        self.config = config
        width = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.num_mels, width, 7, padding=3)
        self.ups = nn.ModuleList(
            nn.ModuleList([nn.ConvTranspose1d(width // 2**i, width // 2 ** (i + 1), kernel, rate,
                                              padding=(kernel - rate) // 2)])
            for i, (rate, kernel) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes)))
        self.resblocks = nn.ModuleList(
            AMPBlock(width // 2 ** (i + 1), kernel, tuple(dilations), config)
            for i in range(len(config.upsample_rates))
            for kernel, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes))
        channels = width // 2 ** len(config.upsample_rates)
        self.activation_post = AntiAliasedSnake(channels, config)
        self.conv_post = nn.Conv1d(channels, 1, 7, padding=3, bias=config.use_bias_at_final)

    def use_activation_impl(self, impl: str | None) -> "BigVGAN":
        """Run every anti-aliased activation with `impl` ("reference", "cpp", "cuda"; None: fastest)."""
        for module in self.modules():
            if isinstance(module, AntiAliasedSnake):
                module.impl = impl
        return self

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Waveform [B, 1, frames * hop] from a log-mel [B, num_mels, frames]."""
        x = self.conv_pre(mel.to(self.conv_pre.weight.dtype))
        kernels = len(self.config.resblock_kernel_sizes)
        for index, (upsample,) in enumerate(self.ups):
            x = upsample(x)
            blocks = self.resblocks[index * kernels:(index + 1) * kernels]
            x = sum(block(x) for block in blocks) / kernels
        x = self.conv_post(self.activation_post(x))
        return torch.tanh(x) if self.config.use_tanh_at_final else x.clamp(-1.0, 1.0)


# ---------------------------------------------------------------- checkpoints


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace weight-norm pairs (``weight_g``/``weight_v`` or ``parametrizations.weight.original0/1``)
    by the weight they stand for: g * v / ||v||, the norm over every dimension but the first."""
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        for suffix, part in ((".weight_g", "g"), (".weight_v", "v"), (".parametrizations.weight.original0", "g"),
                             (".parametrizations.weight.original1", "v")):
            if key.endswith(suffix):
                pairs.setdefault(key[: -len(suffix)], {})[part] = tensor
                break
        else:
            out[key] = tensor
    for prefix, parts in pairs.items():
        if set(parts) != {"g", "v"}:
            raise CheckpointError(f"weight norm of {prefix} is missing its {'g' if 'v' in parts else 'v'} half")
        g, v = parts["g"].float(), parts["v"].float()
        norm = v.norm(dim=tuple(range(1, v.dim())), keepdim=True)
        out[f"{prefix}.weight"] = v * (g / norm)
    return out


_CONFIG_FIELDS = {field.name for field in dataclasses.fields(BigVGANConfig)}


def config_from_nvidia(config: str | os.PathLike | dict) -> BigVGANConfig:
    """An NVIDIA BigVGAN config.json (a path, or its parsed dict) as a BigVGANConfig
    (training-only keys are ignored)."""
    data, source = read_config_source(config, "BigVGAN config")
    missing = [key for key in ("upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel",
                               "resblock_kernel_sizes", "resblock_dilation_sizes", "num_mels") if key not in data]
    if missing:
        raise ConfigError(f"{source}: not a BigVGAN config (no {', '.join(missing)})")
    values = {key: value for key, value in data.items() if key in _CONFIG_FIELDS}
    values["resblock"] = str(values.get("resblock", "1"))
    return BigVGANConfig.from_dict(values)


def load_bigvgan(path: str | os.PathLike, config: str | os.PathLike | dict | BigVGANConfig | None = None,
                 dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> BigVGAN:
    """A BigVGAN in eval mode from our checkpoint or an NVIDIA one (``{"generator": ...}``).

    `config` (NVIDIA files only; ours carry their config): NVIDIA's config.json as a path or as
    its parsed dict, or a BigVGANConfig; None reads the config.json beside the file."""
    source = Path(path)
    payload = safe_torch_load(source)
    if isinstance(payload, dict) and str(payload.get("format", "")).startswith("clipsonic."):
        ours = load_checkpoint(source, CHECKPOINT_KIND, max_version=CHECKPOINT_VERSION)
        model_config, state = BigVGANConfig.from_dict(ours["config"]), ours["state_dict"]
    else:
        if not isinstance(payload, dict) or not isinstance(payload.get("generator"), dict):
            raise CheckpointError(f"{source}: not a BigVGAN generator checkpoint (no 'generator' state dict)")
        state = payload["generator"]
        if isinstance(config, BigVGANConfig):
            model_config = config
        elif config is not None:
            model_config = config_from_nvidia(config)
        elif (source.parent / "config.json").is_file():
            model_config = config_from_nvidia(source.parent / "config.json")
        else:
            raise ConfigError(f"{source}: needs its config.json (none given and none beside it)")
    model = BigVGAN(model_config)
    folded = {k: v.float() if v.is_floating_point() else v for k, v in fold_weight_norm(state).items()}
    load_state_dict_strict(model, folded, source)
    if dtype is not None and dtype != torch.float32:
        from clipsonic.nn import set_precision

        set_precision(model, dtype)
    return model.to(device).eval()


def save_bigvgan(path: str | os.PathLike, model: BigVGAN) -> Path:
    state = {k: v.float() for k, v in model.state_dict().items()}
    return save_checkpoint(path, CHECKPOINT_KIND, model.config, state, version=CHECKPOINT_VERSION)
