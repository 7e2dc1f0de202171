"""Deterministic random weights and test images, shared by fixture generators and tests.

The reference implementations and ours are fed the same weights without storing them: each
tensor is drawn, in sorted key order, from NumPy's PCG64 generator (stable across platforms),
and scaled like a sensible initialisation so that deep stacks stay numerically tame.
"""

from __future__ import annotations

import re

import numpy as np
import torch

_NORM_WEIGHT = re.compile(r"(^|\.)(ln_\w+|norm\w*|layer_?norm\w*)\.weight$|\.g$")
_NORM_BIAS = re.compile(r"(^|\.)(ln_\w+|norm\w*|layer_?norm\w*)\.bias$")
# Learned stand-in vectors (null tokens, queries) are drawn like the activations they replace.
_TOKEN_LIKE = re.compile(r"(null_kv|learned_query|null_text_embed)$")
# Matrices used as x @ W (rather than nn.Linear's x @ W.T) have their fan-in first.
_INPUT_FIRST = re.compile(r"(^|\.)(proj|text_projection)$")


def seeded_tensor(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    z = rng.standard_normal(shape, dtype=np.float32)
    if _NORM_WEIGHT.search(name):
        return 1.0 + 0.1 * z
    if _NORM_BIAS.search(name):
        return 0.1 * z
    if _TOKEN_LIKE.search(name):
        return z
    if name.endswith("weight_g"):  # weight-norm magnitudes: positive, moderate
        return 0.3 + 0.05 * z
    if name.endswith("logit_scale"):
        return np.full(shape, np.log(1 / 0.07), dtype=np.float32)
    if len(shape) >= 2:
        fan_in = shape[0] if _INPUT_FIRST.search(name) else int(np.prod(shape[1:]))
        return z / np.float32(np.sqrt(fan_in))
    if len(shape) == 1 and name.endswith("class_embedding"):
        return z / np.float32(np.sqrt(shape[0]))
    return 0.02 * z


def seeded_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return {name: torch.from_numpy(seeded_tensor(name, tuple(shapes[name]), rng)) for name in sorted(shapes)}


def natural_image(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth gradients, soft blobs and a hard-edged patch: photo-like statistics, uint8 [H, W, 3]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (x * rng.uniform(0.5, 2) + y * rng.uniform(0.5, 2)) + c)
                      for c in range(3)], axis=-1)
    for _ in range(6):
        cy, cx, radius = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius**2))
        image += blob[..., None] * rng.uniform(-0.4, 0.4, size=3)
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    image[top:top + height // 4, left:left + width // 5] = rng.uniform(0, 1, size=3)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


PREPROCESS_SIZES = [(360, 480), (200, 300), (224, 224), (500, 180), (150, 150)]


def seeded_pixels(count: int, resolution: int, seed: int) -> torch.Tensor:
    """Normalised-image-like input [count, 3, resolution, resolution], float32."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((count, 3, resolution, resolution), dtype=np.float32))
