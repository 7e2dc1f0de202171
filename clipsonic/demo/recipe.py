"""The demo bundle's recipe: its settings (`DemoRecipe`), captions and vocabulary, and its CLIP.

The demo CLIP is trained contrastively (`clipsonic.demo.contrastive`) on pictures of the
synthetic training clips and their captions in a few templates (`train_demo_clip`).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from clipsonic.config import Config

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DemoRecipe(Config):
    seed: int = 0
    clips_per_class: int = 20
    clip_steps: int = 500
    clip_batch: int = 64
    clip_lr: float = 1e-3
    vggish_steps: int = 500  # the demo VGGish (demo FAD embedding): 128/128 held-out clips after 600 on 8 classes
    vggish_batch: int = 64
    vggish_lr: float = 1e-3
    unet_preset: str = "demo"
    unet_steps: int = 4000
    unet_batch: int = 16
    unet_lr: float = 1e-3  # short runs of small models: the paper's 1e-4 would need many more steps
    # The CLIP-TTA baseline (eval's row): the same UNet and recipe, conditioned on the CLIP text
    # embedding of "a photo of [label]" instead of the frame's image embedding (paper §3).
    tta_steps: int = 4000
    crop_frames: int = 32  # 1 s: half the paper's window, twice the steps in the same time
    # Velocity, not noise: an eps UNet's data estimate at the first sampling steps multiplies its
    # error by up to 8e4, and the level of its samples wandered by 10-28 dB (BENCHMARKS.md).
    unet_prediction: str = "v"
    prior_steps: int = 1000
    prior_batch: int = 64
    prior_lr: float = 1e-3  # at 3e-4 the tiny prior's loss had not left its plateau after 1500 steps
    ema: float = 0.99  # at 0.999 a third of the EMA would still be the initial weights after 1100 steps
    gate_samples: int = 16
    gate_seconds: float = 4.0
    # The bundle's recommended guidance, which the gate measures. None (w = 1): at w = 1.5 the
    # samples were 2-6 dB louder than the real clips (BENCHMARKS.md).
    gate_guidance: float = 1.0
    gate_steps: int = 25
    gate_dtype: str = "bf16"  # the gate's generation precision (bf16: 3-4x faster on CPUs with AMX)
    # The classifier's centroids: with the 4 test clips per class, a bell's pitch (which varies by
    # an octave) made the centroid a guess, and only half the real bells were recognised.
    gate_reference_clips: int = 32

    PRESETS = {"demo": {}, "smoke": {"clips_per_class": 3, "clip_steps": 4, "clip_batch": 8, "vggish_steps": 4,
                                     "vggish_batch": 8, "unet_preset": "tiny", "unet_steps": 2, "unet_batch": 2,
                                     "tta_steps": 2, "prior_steps": 2, "prior_batch": 4, "gate_samples": 1,
                                     "gate_seconds": 1.0, "gate_steps": 2, "gate_reference_clips": 2}}


CAPTION_TEMPLATES = ("a photo of {label}", "a picture of {label}", "{label}", "a video frame of {label}")

# The demo CLIP learned the class words and the caption templates only; any other word lands
# anywhere in its text space. Measured on the shipped bundle (16 classes): texts of its classes in
# other words ("heavy rain", "a church bell", "a ticking clock", "a car engine", "a car horn",
# "a babbling stream", "footsteps on gravel") come within a cosine of 0.80-1.0 of their class
# caption; texts of other sounds ("applause", "piano music", "a photo of the ocean", "a violin",
# "people talking") reach at most 0.65. Words it never saw beside a class word do not count:
# "a dog barking" reaches 0.49.
PROMPT_SIMILARITY_FLOOR = 0.75


def demo_vocabulary():
    """The demo bundle's sounds, as its bundle.json lists them (texts far from all get a warning)."""
    from clipsonic.bundle import Vocabulary
    from clipsonic.demo.synthetic import CLASSES

    return Vocabulary(tuple(CLASSES), CAPTION_TEMPLATES[0], PROMPT_SIMILARITY_FLOOR)


def picture_pool(specs, size: int, frames_per_clip: int = 6) -> tuple[np.ndarray, list[str]]:
    """CLIP-sized training pictures from the training clips' picture tracks, with their labels."""
    from clipsonic.imageproc import resize_center_crop
    from clipsonic.demo.synthetic import clip_frames

    pictures, labels = [], []
    for spec in specs:
        frames = clip_frames(spec)
        for index in np.linspace(0, len(frames) - 1, frames_per_clip).round().astype(int):
            pictures.append(resize_center_crop(torch.from_numpy(frames[index]), size).numpy())
            labels.append(spec.label)
    return np.stack(pictures), labels


def train_demo_clip(specs, recipe: DemoRecipe, progress: bool = False):
    """A small CLIP trained contrastively on the training clips' pictures and captions of their class."""
    from clipsonic.clip import CLIP, CLIPConfig
    from clipsonic.demo.contrastive import train_contrastive

    torch.manual_seed(recipe.seed)
    model = CLIP(CLIPConfig.preset("demo"))
    pictures, labels = picture_pool(specs, model.config.image_resolution)

    def batches(rng: np.random.Generator, size: int):
        picks = rng.integers(0, len(pictures), size)
        flips = rng.random(size) < 0.5
        chosen = np.where(flips[:, None, None, None], pictures[picks][:, :, ::-1], pictures[picks])
        captions = [CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))].format(label=labels[i]) for i in picks]
        return np.ascontiguousarray(chosen), captions

    bar = progress_bar(recipe.clip_steps, "clip", progress)
    train_contrastive(model, batches, recipe.clip_steps, recipe.clip_batch, recipe.clip_lr, seed=recipe.seed,
                      progress=(lambda step, loss: bar.update(1) or bar.set_postfix(loss=f"{loss:.3f}",
                                                                                     refresh=False)) if bar else None)
    if bar:
        bar.close()
    return model


def progress_bar(total: int, name: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="step", desc=name, dynamic_ncols=True)


