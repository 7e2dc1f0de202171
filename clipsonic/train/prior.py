"""Training the SD diffusion prior on a dataset folder (`clipsonic train-prior`).

Each sample pairs a clip's label text — the CLIP text embedding and token encodings of
"a photo of [label]", precomputed in the dataset's labels.npz — with the CLIP image
embedding of one of the clip's frames, drawn at random. The text is hidden with probability
``cond_drop_prob`` (10 %). The relative-position bias starts at zero (see `PriorTask`).
Optimiser and loop: `clipsonic.train.loop` (AdamW, EMA, resumable, torchrun-able),
with the paper's prior settings as defaults (lr 1e-4, weight decay 0.06).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clipsonic.data import Dataset
from clipsonic.errors import ClipsonicError
from clipsonic.prior import CHECKPOINT_KIND, CHECKPOINT_VERSION, DiffusionPrior, PriorCheckpointInfo, PriorConfig
from clipsonic.train.loop import StepContext, Task, epoch_indices


class PriorTask(Task):
    kind = CHECKPOINT_KIND
    version = CHECKPOINT_VERSION

    def __init__(self, dataset: Dataset, config: PriorConfig) -> None:
        labels = dataset.labels()
        width = labels["token_encodings"].shape[-1]
        if width != dataset.embed_dim:
            raise ClipsonicError(f"{dataset.folder}: token encodings are {width}-d but embeddings {dataset.embed_dim}-d; "
                                 "the prior needs a CLIP whose text width equals its embedding size (ViT-L/14)")
        if config.image_embed_dim != dataset.embed_dim:
            config = config.replace(net=config.net.replace(dim=dataset.embed_dim), image_embed_dim=dataset.embed_dim)
        self.dataset = dataset
        self.index = {str(label): row for row, label in enumerate(labels["labels"])}
        self.records = [r for r in dataset.records if r.label in self.index and r.frame_count > 0]
        if not self.records:
            raise ClipsonicError(f"{dataset.folder}: no labelled training clip with frames to train the prior on")
        self.text_embeddings = torch.from_numpy(np.asarray(labels["text_embeddings"], dtype=np.float32))
        self.token_encodings = torch.from_numpy(np.asarray(labels["token_encodings"], dtype=np.float32))
        self.model = DiffusionPrior(config)
        # Training starts the T5 relative-position bias at zero, not at 1.1.0's N(0, 1) draw: the
        # network multiplies it by 128 (pb-relax), so a drawn bias makes the logits differ by hundreds
        # between relative distances, every head attends to one neighbouring position with a saturated
        # softmax (no gradient), and a shallow net never reaches the text. The demo's 2-layer prior
        # trained that way ignored its text (draws of the right class: 13 %; started at zero: 100 %).
        with torch.no_grad():
            self.model.position_bias.zero_()

    def loss(self, model: torch.nn.Module, context: StepContext) -> torch.Tensor:
        picks = epoch_indices(len(self.records), context.batch_size, context.step, context.rank, context.world,
                              context.seed)
        images, rows = [], []
        for index in picks:
            record = self.records[index]
            frame = int(torch.randint(0, record.frame_count, (1,), generator=context.generator))
            images.append(self.dataset.image_embeddings(record)[frame])
            rows.append(self.index[record.label])
        rows_tensor = torch.tensor(rows)
        image = torch.from_numpy(np.stack(images)).to(context.device)
        return model(image, self.text_embeddings[rows_tensor].to(context.device),
                     self.token_encodings[rows_tensor].to(context.device), context.generator)

    def checkpoint_config(self) -> dict[str, Any]:
        return self.model.config.to_dict()

    def checkpoint_extra(self) -> dict[str, Any]:
        return PriorCheckpointInfo("trained", self.dataset.info.get("clip"), self.dataset.text_template).to_extra()


def label_image_means(dataset: Dataset) -> torch.Tensor:
    """Each label's mean image embedding [L, D] (frames normalised, then the mean), in labels.npz order."""
    names = [str(name) for name in dataset.labels()["labels"]]
    return F.normalize(torch.stack([F.normalize(torch.from_numpy(np.concatenate(
        [dataset.image_embeddings(r) for r in dataset.records if r.label == name])), dim=-1).mean(0) for name in names]),
        dim=-1)


def draws_of_their_class(model: DiffusionPrior, dataset: Dataset, per_label: int = 16, candidates: int = 1,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether a prior follows its text: `per_label` draws for each label text of `dataset`, their
    cosine with every label's mean image embedding [L * per_label, L], and each draw's label index
    [L * per_label]. A draw is of its class when its row's maximum is at its label."""
    labels = dataset.labels()
    means = label_image_means(dataset)
    text = torch.from_numpy(np.asarray(labels["text_embeddings"], dtype=np.float32))
    tokens = torch.from_numpy(np.asarray(labels["token_encodings"], dtype=np.float32))
    draws = model.sample(text.repeat_interleave(per_label, 0), tokens.repeat_interleave(per_label, 0),
                         candidates=candidates, generator=generator)
    return F.normalize(draws, dim=-1) @ means.T, torch.arange(len(means)).repeat_interleave(per_label)
