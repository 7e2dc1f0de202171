"""Training the spectrogram UNet on a dataset folder (`clipsonic train`).

Each sample is a random `crop_frames`-frame window of a clip's log-mel (64 frames = 2.048 s
in the paper), normalised to [-1, 1], conditioned (`condition`) on the CLIP image embedding of
the video frame nearest the window's centre; or, for the baselines, on a text embedding of the
clip's label: CLIP-TTA (``text``) on the dataset's CLIP text embedding of "a photo of [label]",
CLAP-TTA (``clap-text``) on the LAION-CLAP text embedding of "the sound of [label]"
(`clipsonic.variants.label_texts`), computed once per label when the task is built. With
probability `cond_drop` the condition is replaced by the UNet's learned null embedding
(classifier-free guidance).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from clipsonic.audio import LOG_FLOOR
from clipsonic.config import Config
from clipsonic.data import Dataset
from clipsonic.diffusion import GaussianDiffusion
from clipsonic.errors import ClipsonicError, ParameterError
from clipsonic.train.loop import StepContext, Task, epoch_indices, first_difference
from clipsonic.unet import CHECKPOINT_KIND, CHECKPOINT_VERSION, MelNormalization, UNet, UNetCheckpointInfo, UNetConfig
from clipsonic.variants import CLAP_TEXT, CONDITIONS, IMAGE, TEXT, VARIANTS, label_texts, query_embeddings


@dataclasses.dataclass(frozen=True)
class DiffusionTrainingConfig(Config):
    crop_frames: int = 64
    cond_drop: float = 0.1
    condition: str = IMAGE  # what the UNet is conditioned on: a value of `clipsonic.variants.CONDITIONS`
    diffusion_steps: int = 4000
    prediction: str = "eps"  # the paper's noise prediction, or "v" (`clipsonic.diffusion.Prediction`)


def mel_normalization(dataset: Dataset, clips: int = 256) -> MelNormalization:
    """[-1, 1] spans the log floor to the largest value seen in (up to) `clips` training clips,
    rounded up to a multiple of 0.5."""
    stride = max(1, len(dataset) // clips)
    peak = max(float(dataset.mel(record).max()) for record in dataset.records[::stride])
    return MelNormalization(low=math.log(LOG_FLOOR), high=math.ceil(max(peak, 0.0) * 2 + 1e-9) / 2)


class DiffusionTask(Task):
    kind = CHECKPOINT_KIND
    version = CHECKPOINT_VERSION

    def __init__(self, dataset: Dataset, unet_config: UNetConfig, settings: DiffusionTrainingConfig,
                 mel_norm: MelNormalization | None = None, clap=None) -> None:
        """`clap`: the LAION-CLAP model (`clipsonic.clap.CLAP`) that embeds the labels for the
        ``clap-text`` condition; only the label embeddings are kept."""
        if settings.condition not in CONDITIONS.values():
            raise ParameterError(f"{{option}}: not one of {', '.join(CONDITIONS.values())}", "condition",
                                 settings.condition)
        if settings.condition == CLAP_TEXT and clap is None:
            raise ParameterError("the clap-text condition needs the LAION-CLAP model ({option}) that embeds the "
                                 "labels", "clap", None)
        embed_dim = clap.config.joint_dim if settings.condition == CLAP_TEXT else dataset.embed_dim
        if unet_config.cond_dim != embed_dim:
            unet_config = unet_config.replace(cond_dim=embed_dim)
        if settings.crop_frames % unet_config.downsampling:
            raise ParameterError(f"{{option}}: not a multiple of {unet_config.downsampling} (the UNet's "
                                 f"downsampling)", "crop_frames", settings.crop_frames)
        self.dataset, self.settings, self.embed_dim = dataset, settings, embed_dim
        by_label = settings.condition != IMAGE
        self.records = [r for r in dataset.records if r.mel_frames >= settings.crop_frames
                        and (r.label is not None or not by_label)]
        if not self.records:
            needs = " labelled" if by_label else ""
            raise ClipsonicError(f"{dataset.folder}: no{needs} training clip has {settings.crop_frames} mel frames")
        self.model = UNet(unet_config)
        self.mel_norm = mel_norm or mel_normalization(dataset)
        self.diffusion = GaussianDiffusion.cosine(settings.diffusion_steps, settings.prediction)
        labels = sorted({r.label for r in self.records}) if by_label else []
        self._text = {}  # label -> its text embedding [D]
        if settings.condition == CLAP_TEXT:
            texts = label_texts(VARIANTS["clap-tta"], labels, dataset.text_template)
            embedded = query_embeddings(VARIANTS["clap-tta"], None, texts=texts, clap=clap).cpu().numpy()
            self._text = dict(zip(labels, embedded))
        elif by_label:
            self._text = {label: dataset.text_embedding(label) for label in labels}

    @classmethod
    def starting_from(cls, checkpoint, dataset: Dataset, settings: DiffusionTrainingConfig,
                      clap=None) -> "DiffusionTask":
        """A task that begins with a trained UNet's (EMA) weights, size and mel normalisation instead of
        fresh ones: to go on training it with other settings (e.g. longer crops, which a resumed run
        refuses). Its condition and prediction must be `settings`'."""
        from clipsonic.checkpoint import load_checkpoint, load_state_dict_strict

        payload = load_checkpoint(checkpoint, CHECKPOINT_KIND, max_version=CHECKPOINT_VERSION)
        info = UNetCheckpointInfo.from_extra(payload["extra"])
        task = cls(dataset, UNetConfig.from_dict(payload["config"]), settings, info.mel_norm, clap)
        # The model's config differs only where the task had to change it (another condition width).
        difference = first_difference(
            {"condition": info.condition, "prediction": info.prediction, "model": payload["config"]},
            {"condition": settings.condition, "prediction": settings.prediction, "model": task.model.config.to_dict()})
        if difference:
            raise ClipsonicError(f"{checkpoint}: its UNet has {difference}; it cannot start this training")
        load_state_dict_strict(task.model, payload["state_dict"], checkpoint)
        return task

    def _condition(self, record, start: int) -> np.ndarray:
        if self.settings.condition != IMAGE:
            return self._text[record.label]
        config = self.dataset.mel_config
        centre = (start + self.settings.crop_frames / 2) * config.hop_size / config.sample_rate
        nearest = int(np.argmin(np.abs(np.asarray(record.frame_times) - centre)))
        return self.dataset.image_embeddings(record)[nearest]

    def batch(self, context: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised mel crops [B, 1, n_mels, crop] and their conditions [B, D] for one step."""
        picks = epoch_indices(len(self.records), context.batch_size, context.step, context.rank, context.world,
                              context.seed)
        mels, conds = [], []
        for index in picks:
            record = self.records[index]
            start = int(torch.randint(0, record.mel_frames - self.settings.crop_frames + 1, (1,),
                                      generator=context.generator))
            mels.append(self.dataset.mel(record, start, self.settings.crop_frames))
            conds.append(self._condition(record, start))
        x0 = self.mel_norm.to_unit(torch.from_numpy(np.stack(mels))[:, None])
        return x0.to(context.device), torch.from_numpy(np.stack(conds)).to(context.device)

    def loss(self, model: torch.nn.Module, context: StepContext) -> torch.Tensor:
        x0, cond = self.batch(context)
        drop = (torch.rand(x0.shape[0], generator=context.generator) < self.settings.cond_drop).to(context.device)
        return self.diffusion.training_loss(lambda xt, t: model(xt, t, cond, drop), x0, context.generator)

    def checkpoint_config(self) -> dict[str, Any]:
        return self.model.config.to_dict()

    def saved_training(self, training: dict[str, Any] | None) -> dict[str, Any] | None:
        """Older runs' settings: a `text_cond` flag before `condition`, no `prediction` before v."""
        if training is None:
            return None
        upgraded = {key: value for key, value in training.items() if key != "text_cond"}
        if "text_cond" in training:
            upgraded["condition"] = TEXT if training["text_cond"] else IMAGE
        upgraded.setdefault("prediction", "eps")
        return upgraded

    def checkpoint_extra(self) -> dict[str, Any]:
        return UNetCheckpointInfo(self.mel_norm, self.dataset.mel_config, self.settings.condition, self.embed_dim,
                                  self.settings.diffusion_steps, self.dataset.info.get("clip"), self.settings.to_dict(),
                                  self.diffusion.prediction.value).to_extra()
