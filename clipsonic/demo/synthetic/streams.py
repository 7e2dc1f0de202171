"""What every part of the synthetic data shares: the classes and one clip's random streams.

Every clip is drawn from its own ``numpy.random.Generator``, seeded by ``(seed, class, clip,
stream)``: clips can be made in any order or in parallel, adding clips leaves the earlier ones
unchanged, and the audio does not depend on the picture's random draws (or the reverse).
"""

from __future__ import annotations

import numpy as np

from clipsonic.errors import ClipsonicError

CLASSES = ("rain", "bell", "bird", "engine", "drum", "siren", "wind", "clock",
           "thunder", "dog", "footsteps", "stream", "fire", "phone", "horn", "whistle")

# Independent random streams of one clip (the last entry of its seed sequence).
DURATION_STREAM, AUDIO_STREAM, SCENE_STREAM, PICTURE_STREAM = 0, 1, 2, 3


def class_index(label: str) -> int:
    """The class's position in CLASSES; an unknown class is an error naming the known ones."""
    if label not in CLASSES:
        raise ClipsonicError(f"unknown class {label!r}; choose from {', '.join(CLASSES)}")
    return CLASSES.index(label)


def clip_rng(seed: int, label: str, index: int, stream: int) -> np.random.Generator:
    """The generator of one stream of one clip; independent of every other (seed, clip, stream)."""
    return np.random.default_rng([int(seed), class_index(label), int(index), int(stream)])


