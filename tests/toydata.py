"""A tiny labelled dataset folder in the format `clipsonic preprocess` writes, for trainer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clipsonic.audio import MelConfig
from clipsonic.data import DatasetWriter

LABELS = ("rain", "bell")
MELS = 16  # few mel bands keep the trainer tests fast; the models take any multiple of their downsampling
BANDS = ((2, 6), (10, 14))  # mel bins each class lights up


def class_mel(label_index: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """Log-mel [MELS, frames]: quiet everywhere but one class-specific band with a little texture."""
    mel = np.full((MELS, frames), -10.0, dtype=np.float32) + 0.3 * rng.standard_normal((MELS, frames)).astype(np.float32)
    low, high = BANDS[label_index]
    mel[low:high] = rng.uniform(-1.5, 0.5) + 0.5 * rng.standard_normal((high - low, frames))
    return mel


def class_embedding(label_index: int, dim: int) -> np.ndarray:
    direction = np.zeros(dim, dtype=np.float32)
    direction[label_index] = 1.0
    return direction


def make_toy_dataset(folder: Path, clips_per_class: int = 6, frames: int = 40, embed_dim: int = 16,
                     text_width: int = 8, seed: int = 0, test_clips: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    writer = DatasetWriter(folder, MelConfig(n_mels=MELS), embed_dim, clip_info={"name": "toy"}, shard_clips=5)
    for label_index, label in enumerate(LABELS):
        for index in range(clips_per_class + test_clips):
            times = [0.3, 0.6, 0.9, 1.1]
            embeddings = class_embedding(label_index, embed_dim) + 0.05 * rng.standard_normal((len(times), embed_dim))
            writer.add(f"{label}-{index}", f"videos/{label}-{index}.mp4", class_mel(label_index, frames, rng),
                       embeddings.astype(np.float32), times, label, "test" if index >= clips_per_class else "train",
                       frames * 512 / 16000)
    writer.flush()
    text = np.stack([class_embedding(i, embed_dim) + 0.1 for i in range(len(LABELS))])
    writer.write_labels(LABELS, text, rng.standard_normal((len(LABELS), 77, text_width)).astype(np.float32))
    return folder
