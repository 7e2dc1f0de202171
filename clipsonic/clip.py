"""CLIP (Radford et al., 2021): a ViT image encoder and a causal text transformer, OpenAI's layout.

Re-derived from openai/CLIP's ``model.py`` (MIT) so that OpenAI's weights load with
``strict=True`` under their own key names (``visual.conv1``, ``transformer.resblocks.N.attn.
in_proj_weight``, ``ln_final``, ...). Differences from upstream: ViT only (no ResNet towers);
sequences are batch-first ([B, L, W] rather than [L, B, W]); attention goes through
`clipsonic.ops.attention`; LayerNorm always computes in float32; outputs are float32 whatever
the compute dtype; `encode_text` can also return the per-token encodings (after ``ln_final``,
before the projection) that the DALL-E 2 prior reads.

Checkpoints load from OpenAI's TorchScript archives (tensors read without running pickled
code), OpenAI-layout state dicts, Hugging Face ``CLIPModel`` files (``pytorch_model.bin`` or
``model.safetensors``, q/k/v merged into ``in_proj``) and our own checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from clipsonic import ops
from clipsonic.checkpoint import checked_payload, is_ours, load_state_dict_strict, safe_torch_load, save_checkpoint
from clipsonic.config import Config
from clipsonic.errors import CheckpointError
from clipsonic.imageproc import resize_center_crop
from clipsonic.nn import LayerNorm, QuickGELU, module_dtype, set_precision
from clipsonic.tensorfiles import is_torchscript_archive, read_safetensors, read_torchscript

CHECKPOINT_KIND = "clip"
CHECKPOINT_VERSION = 1
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclasses.dataclass(frozen=True)
class CLIPConfig(Config):
    """Tower sizes. The defaults (preset ``paper``) are ViT-L/14 at 224 px."""

    embed_dim: int = 768
    image_resolution: int = 224
    vision_patch_size: int = 14
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_mlp_width: int = 4096
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_mlp_width: int = 3072

    PRESETS = {
        "paper": {},
        "vit-l-14": {},
        "vit-l-14-336": {"image_resolution": 336},
        "vit-b-16": {"embed_dim": 512, "vision_patch_size": 16, "vision_width": 768, "vision_layers": 12,
                     "vision_heads": 12, "vision_mlp_width": 3072, "text_width": 512, "text_heads": 8,
                     "text_mlp_width": 2048},
        "vit-b-32": {"embed_dim": 512, "vision_patch_size": 32, "vision_width": 768, "vision_layers": 12,
                     "vision_heads": 12, "vision_mlp_width": 3072, "text_width": 512, "text_heads": 8,
                     "text_mlp_width": 2048},
        # The shipped demo CLIP (trained on the synthetic pictures): text width = embedding size, as the prior needs.
        "demo": {"embed_dim": 64, "image_resolution": 64, "vision_patch_size": 8, "vision_width": 128,
                 "vision_layers": 3, "vision_heads": 4, "vision_mlp_width": 512, "text_width": 64, "text_layers": 2,
                 "text_heads": 2, "text_mlp_width": 256},
        "tiny": {"embed_dim": 64, "image_resolution": 32, "vision_patch_size": 8, "vision_width": 128,
                 "vision_layers": 2, "vision_heads": 2, "vision_mlp_width": 512, "vocab_size": 49408,
                 "text_width": 128, "text_layers": 2, "text_heads": 2, "text_mlp_width": 512},
    }

    def __post_init__(self) -> None:
        if self.image_resolution % self.vision_patch_size:
            raise ValueError(f"image_resolution {self.image_resolution} is not a multiple of the patch "
                             f"size {self.vision_patch_size}")
        for tower, width, heads in (("vision", self.vision_width, self.vision_heads),
                                    ("text", self.text_width, self.text_heads)):
            if width % heads:
                raise ValueError(f"{tower} width {width} is not divisible by {heads} heads")

    @property
    def grid_size(self) -> int:
        return self.image_resolution // self.vision_patch_size


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names (OpenAI's keys)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)  # 3 B H L D
        out = ops.attention(qkv[0], qkv[1], qkv[2], causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))  # B H L D -> B L W


class ResidualBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        self.ln_1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, mlp_width)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(mlp_width, width))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), self.causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, causal: bool) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualBlock(width, heads, mlp_width, causal) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        width, patch = config.vision_width, config.vision_patch_size
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(config.grid_size**2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, config.vision_layers, config.vision_heads, config.vision_mlp_width,
                                       causal=False)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, config.embed_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixels)  # [B, W, grid, grid]
        x = x.flatten(2).transpose(1, 2)  # [B, grid*grid, W]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class CLIP(nn.Module):
    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.visual = VisionTransformer(config)
        self.token_embedding = nn.Embedding(config.vocab_size, config.text_width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(config.context_length, config.text_width))
        self.transformer = Transformer(config.text_width, config.text_layers, config.text_heads,
                                       config.text_mlp_width, causal=True)
        self.ln_final = LayerNorm(config.text_width)
        self.text_projection = nn.Parameter(config.text_width**-0.5 * torch.randn(config.text_width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    @property
    def dtype(self) -> torch.dtype:
        return module_dtype(self)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image embeddings [B, embed_dim] (float32, not normalised) of `pixels` [B, 3, R, R]
        prepared by `preprocess_image`."""
        if pixels.dim() != 4 or pixels.shape[1:] != (3, self.config.image_resolution, self.config.image_resolution):
            size = self.config.image_resolution
            raise ValueError(f"encode_image expects pixels [B, 3, {size}, {size}], got {tuple(pixels.shape)}")
        return self.visual(pixels.to(self.dtype)).float()

    def encode_text(self, tokens: torch.Tensor, return_tokens: bool = False):
        """Text embeddings [B, embed_dim] (float32, not normalised) of `tokens` [B, context] from
        `clipsonic.tokenizer.tokenize`; with `return_tokens`, also the encodings of every
        position [B, context, text_width] after ``ln_final`` and before the projection."""
        if tokens.dim() != 2 or tokens.shape[1] != self.config.context_length:
            raise ValueError(f"encode_text expects tokens [B, {self.config.context_length}], got {tuple(tokens.shape)}")
        x = self.token_embedding(tokens) + self.positional_embedding.to(self.dtype)
        x = self.ln_final(self.transformer(x))
        # The end-of-text token has the largest id, so argmax finds where each text ends.
        pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)] @ self.text_projection
        return (pooled.float(), x.float()) if return_tokens else pooled.float()

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image-text similarity logits [B_img, B_txt] and their transpose, as OpenAI's forward."""
        image = nn.functional.normalize(self.encode_image(pixels), dim=-1)
        text = nn.functional.normalize(self.encode_text(tokens), dim=-1)
        logits = self.logit_scale.float().exp() * image @ text.T
        return logits, logits.T


def preprocess_image(rgb: np.ndarray | torch.Tensor, resolution: int = 224) -> torch.Tensor:
    """An RGB uint8 image [H, W, 3] -> CLIP input [3, resolution, resolution] (float32).

    OpenAI's pipeline without PIL or torchvision: bicubic resize (antialiased, with PIL's
    8-bit rounding) of the shortest side to `resolution`, center crop, then CLIP's
    per-channel normalisation.
    """
    image = torch.as_tensor(np.asarray(rgb)) if not isinstance(rgb, torch.Tensor) else rgb
    if image.dim() != 3 or image.shape[-1] != 3 or image.dtype != torch.uint8:
        raise ValueError(f"preprocess_image expects uint8 [H, W, 3], got {image.dtype} {tuple(image.shape)}")
    return normalize_pixels(resize_center_crop(image, resolution)[None])[0]


def normalize_pixels(images: torch.Tensor) -> torch.Tensor:
    """Already cropped uint8 images [N, H, W, 3] -> CLIP input [N, 3, H, W] (float32, CLIP's mean and std)."""
    scaled = images.permute(0, 3, 1, 2).float() / 255.0  # NHWC -> NCHW
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (scaled - mean) / std


# ---------------------------------------------------------------- checkpoint formats

def config_from_state_dict(state: dict[str, torch.Tensor], heads: tuple[int, int] | None = None) -> CLIPConfig:
    """Tower sizes read off an OpenAI-layout state dict. Heads are width // 64 (OpenAI's rule)
    unless `heads` = (vision, text) says otherwise."""
    if "visual.proj" not in state:
        if any(key.startswith("visual.layer1.") for key in state):
            raise CheckpointError("ResNet CLIP towers are not supported; use a ViT CLIP (e.g. ViT-L/14)")
        raise CheckpointError("no visual.proj: not an OpenAI-layout CLIP state dict")

    def count_layers(prefix: str) -> int:
        pattern = re.compile(rf"^{re.escape(prefix)}resblocks\.(\d+)\.")
        return len({match.group(1) for key in state if (match := pattern.match(key))})

    vision_width = state["visual.conv1.weight"].shape[0]
    text_width = state["ln_final.weight"].shape[0]
    patch = state["visual.conv1.weight"].shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    vision_heads, text_heads = heads or (vision_width // 64, text_width // 64)
    return CLIPConfig(
        embed_dim=state["text_projection"].shape[1],
        image_resolution=patch * grid,
        vision_patch_size=patch,
        vision_width=vision_width,
        vision_layers=count_layers("visual.transformer."),
        vision_heads=vision_heads,
        vision_mlp_width=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        context_length=state["positional_embedding"].shape[0],
        vocab_size=state["token_embedding.weight"].shape[0],
        text_width=text_width,
        text_layers=count_layers("transformer."),
        text_heads=text_heads,
        text_mlp_width=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
    )


_HF_RENAMES = [
    (r"^text_model\.embeddings\.token_embedding\.weight$", "token_embedding.weight"),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "positional_embedding"),
    (r"^text_model\.final_layer_norm\.", "ln_final."),
    (r"^text_model\.encoder\.layers\.(\d+)\.", r"transformer.resblocks.\1."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.patch_embedding\.weight$", "visual.conv1.weight"),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),  # sic: the Hugging Face key is misspelt
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.", r"visual.transformer.resblocks.\1."),
    (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
    (r"\.layer_norm1\.", ".ln_1."),
    (r"\.layer_norm2\.", ".ln_2."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
]
_HF_DROPPED = re.compile(r"^(text_model|vision_model)\.embeddings\.position_ids$")


def from_hugging_face(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``CLIPModel`` keys -> OpenAI keys (q, k, v concatenated into in_proj; the
    projections, stored as nn.Linear weights there, transposed)."""
    out: dict[str, torch.Tensor] = {}
    split_qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if _HF_DROPPED.match(key):
            continue
        if key == "visual_projection.weight":
            out["visual.proj"] = tensor.T.contiguous()
            continue
        if key == "text_projection.weight":
            out["text_projection"] = tensor.T.contiguous()
            continue
        if key == "logit_scale":
            out[key] = tensor
            continue
        name = key
        for pattern, replacement in _HF_RENAMES:
            name = re.sub(pattern, replacement, name)
        match = re.match(r"^(.*)\.self_attn\.([qkv])_proj\.(weight|bias)$", name)
        if match:
            split_qkv.setdefault(f"{match.group(1)}.attn.in_proj_{match.group(3)}", {})[match.group(2)] = tensor
            continue
        if name == key:
            raise CheckpointError(f"unexpected Hugging Face CLIP key {key}")
        out[name] = tensor
    for name, parts in split_qkv.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise CheckpointError(f"incomplete q/k/v projections for {name}")
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _hugging_face_heads(folder: Path) -> tuple[int, int] | None:
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text(encoding="utf-8"))
    try:
        return (config["vision_config"]["num_attention_heads"], config["text_config"]["num_attention_heads"])
    except KeyError:
        return None


def read_clip_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], CLIPConfig | None, str]:
    """OpenAI-layout state dict, the config when the file carries one, and the layout's name."""
    source = Path(path)
    if source.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (source / name).is_file():
                state = read_safetensors(source / name) if name.endswith(".safetensors") else safe_torch_load(source / name)
                mapped = from_hugging_face(state)
                return mapped, config_from_state_dict(mapped, _hugging_face_heads(source)), "hugging-face"
        raise CheckpointError(f"{source}: folder holds no model.safetensors or pytorch_model.bin")
    if not source.is_file():
        raise CheckpointError(f"{source}: no such CLIP checkpoint")
    if source.suffix == ".safetensors":
        mapped = from_hugging_face(read_safetensors(source))
        return mapped, config_from_state_dict(mapped, _hugging_face_heads(source.parent)), "hugging-face"
    if is_torchscript_archive(source):
        state = {k: v for k, v in read_torchscript(source).items() if k not in OPENAI_EXTRA_KEYS}
        return state, None, "openai-torchscript"
    payload = safe_torch_load(source)
    if is_ours(payload):
        ours = checked_payload(payload, source, CHECKPOINT_KIND, max_version=CHECKPOINT_VERSION)
        return ours["state_dict"], CLIPConfig.from_dict(ours["config"]), "clipsonic"
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(f"{source}: not a CLIP checkpoint (no tensor state dict)")
    if any(key.startswith("text_model.") for key in payload):
        mapped = from_hugging_face(payload)
        return mapped, config_from_state_dict(mapped, _hugging_face_heads(source.parent)), "hugging-face"
    state = {k: v for k, v in payload.items() if k not in OPENAI_EXTRA_KEYS}
    return state, None, "openai"


def load_clip(path: str | os.PathLike, dtype: torch.dtype | None = None,
              device: torch.device | str = "cpu") -> CLIP:
    """A CLIP in eval mode from any supported checkpoint layout (see the module docstring).

    Half-precision files load into float32 unless `dtype` asks for another precision.
    """
    try:
        state, config, _layout = read_clip_weights(path)
        config = config or config_from_state_dict(state)
    except CheckpointError as error:
        message = str(error)
        raise CheckpointError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    model = CLIP(config)
    load_state_dict_strict(model, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, path)
    set_precision(model, dtype or torch.float32)
    return model.to(device).eval()


def save_clip(path: str | os.PathLike, model: CLIP) -> Path:
    """Our checkpoint of `model` (float32 weights, its config)."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    return save_checkpoint(path, CHECKPOINT_KIND, model.config, state, version=CHECKPOINT_VERSION)
