"""Contrastive (CLIP-style) training of a small CLIP on picture-caption pairs, for the demo.

The loss is CLIP's symmetric cross-entropy over the image-text similarity logits, with one
change for data with few distinct captions: every pair in the batch that shares a caption is
a positive (the target spreads evenly over them), where CLIP's loss would push identical
captions apart. Optimisation is AdamW with a cosine learning-rate decay after a short warm-up;
the logit scale is learned and clamped at 100 as in CLIP.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clipsonic.clip import CLIP, normalize_pixels
from clipsonic.tokenizer import tokenize

log = logging.getLogger(__name__)

# (rng, batch) -> (cropped uint8 pictures [B, R, R, 3], their captions)
BatchSource = Callable[[np.random.Generator, int], tuple[np.ndarray, Sequence[str]]]


def contrastive_loss(model: CLIP, pixels: torch.Tensor, tokens: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
    """Symmetric cross-entropy with every same-caption pair a positive."""
    image = F.normalize(model.encode_image(pixels).float(), dim=-1)
    text = F.normalize(model.encode_text(tokens).float(), dim=-1)
    logits = model.logit_scale.float().exp() * image @ text.T  # [B_img, B_txt]
    ids = {caption: index for index, caption in enumerate(dict.fromkeys(captions))}
    labels = torch.tensor([ids[caption] for caption in captions])
    positive = (labels[:, None] == labels[None, :]).float()
    target = positive / positive.sum(dim=1, keepdim=True)
    image_loss = torch.sum(-target * F.log_softmax(logits, dim=1), dim=1).mean()
    text_loss = torch.sum(-target * F.log_softmax(logits.T, dim=1), dim=1).mean()
    return (image_loss + text_loss) / 2


def train_contrastive(model: CLIP, batches: BatchSource, steps: int, batch_size: int = 64, lr: float = 1e-3,
                      weight_decay: float = 0.1, warmup: int = 50, seed: int = 0,
                      progress: Callable[[int, float], None] | None = None) -> CLIP:
    """Train `model` in place for `steps` steps of `batch_size` pairs; returns it in eval mode."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98), eps=1e-6)
    token_cache: dict[str, torch.Tensor] = {}
    model.train()
    for step in range(steps):
        scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup)
                                                                             / max(1, steps - warmup)))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        pictures, captions = batches(rng, batch_size)
        for caption in captions:
            if caption not in token_cache:
                token_cache[caption] = tokenize([caption], model.config.context_length)[0]
        tokens = torch.stack([token_cache[caption] for caption in captions])
        loss = contrastive_loss(model, normalize_pixels(torch.from_numpy(pictures)), tokens, captions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if progress is not None:
            progress(step, float(loss))
    return model.eval()


@torch.no_grad()
def zero_shot_accuracy(model: CLIP, pictures: np.ndarray, labels: Sequence[str], classes: Sequence[str],
                       template: str = "a photo of {label}") -> float:
    """Share of `pictures` whose nearest class text (cosine) is their label."""
    text = F.normalize(model.encode_text(tokenize([template.format(label=c) for c in classes],
                                                  model.config.context_length)), dim=-1)
    image = F.normalize(model.encode_image(normalize_pixels(torch.from_numpy(pictures))), dim=-1)
    predicted = (image @ text.T).argmax(dim=1)
    truth = torch.tensor([list(classes).index(label) for label in labels])
    return float((predicted == truth).float().mean())
