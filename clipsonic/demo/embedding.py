"""The demo bundle's audio embedding: a narrow VGGish trained to tell the synthetic classes apart.

AudioSet's VGGish weights (what the paper's FAD uses) cannot be downloaded everywhere this
package must run, and a VGGish with random weights measures nothing (every model got the same
FAD to 7 digits). So the demo bundle ships its own: VGGish's layout and front end at a quarter
of its widths (`VGGishConfig` preset ``demo``, 1.2 M parameters), trained as a classifier on
0.96-s examples of the demo's training clips, with a linear head. Its 128-d embedding (before
the head) is what the demo FAD compares, and its head is the quality gate's classifier: it hears
texture and rhythm, not just the mean spectrum. It knows only these sounds, so its FAD is not
comparable with any paper's (README: *The demo benchmark*).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.nn import functional as F

log = logging.getLogger(__name__)


def _clip_frames(specs, sample_rate: int) -> list[torch.Tensor]:
    """Each clip's VGGish log-mel frames [F, 64]."""
    from clipsonic.demo.synthetic import clip_audio
    from clipsonic.vggish import log_mel

    return [log_mel(torch.from_numpy(clip_audio(spec, sample_rate))) for spec in specs]


def train_demo_vggish(specs, classes, steps: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                      progress=None):
    """A `VGGishConfig.preset("demo")` network and a linear head trained with cross-entropy on
    random 0.96-s examples of `specs`' sound tracks; returned with its `classes` and `head` set."""
    from clipsonic.vggish import EXAMPLE_FRAMES, SAMPLE_RATE, VGGish, VGGishConfig

    torch.manual_seed(seed)
    model = VGGish(VGGishConfig.preset("demo"))
    head = torch.nn.Linear(model.config.embedding_size, len(classes))
    frames = _clip_frames(specs, SAMPLE_RATE)
    targets = torch.tensor([list(classes).index(spec.label) for spec in specs])
    parameters = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:  # cosine decay: the last steps settle the head
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / steps))
        picks = rng.integers(0, len(specs), batch_size)
        examples = []
        for index in picks:
            start = rng.integers(0, frames[index].shape[0] - EXAMPLE_FRAMES + 1)
            examples.append(frames[index][start:start + EXAMPLE_FRAMES])
        logits = head(model(torch.stack(examples)))
        loss = F.cross_entropy(logits, targets[picks])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if progress:
            progress(step, loss.item())
    model.eval()
    model.origin, model.classes = "demo", tuple(classes)
    model.head = (head.weight.detach().clone(), head.bias.detach().clone())
    return model
