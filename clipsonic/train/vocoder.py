"""Training BigVGAN on a folder of audio or videos, or a dataset's sources (`clipsonic train-vocoder`).

The recipe of HiFi-GAN / BigVGAN: the generator (with weight normalisation while training)
turns the log-mel of a random audio segment back into audio; a multi-period discriminator
(periods 2, 3, 5, 7, 11) and a multi-resolution spectrogram discriminator judge it with
least-squares GAN losses; the generator also minimises feature matching (x2) and the L1
distance of log-mels (x45). AdamW with betas (0.8, 0.99), exponentially decaying learning
rate. The loop (checkpoints, exact resumption, torchrun) is `clipsonic.train.loop`; the
validation mel-L1 on held-out audio is logged every ``validate_every`` steps.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from clipsonic.audio import load_audio, mel_spectrogram
from clipsonic.config import Config
from clipsonic.errors import ClipsonicError, ParameterError
from clipsonic.media import AUDIO_SUFFIXES, VIDEO_SUFFIXES, find_files
from clipsonic.train.loop import StepContext, StepLoss, Task, epoch_indices
from clipsonic.train.discriminators import Discriminators
from clipsonic.vocoder import CHECKPOINT_KIND, CHECKPOINT_VERSION, BigVGAN, BigVGANConfig

# Audio files, and videos (their soundtrack is decoded by ffmpeg): the folder `preprocess` reads works too.
@dataclasses.dataclass(frozen=True)
class VocoderTrainingConfig(Config):
    segment_samples: int = 32768
    discriminator_width: int = 32  # first layer's channels; the multi-period layers grow to 32x this
    mel_weight: float = 45.0
    feature_weight: float = 2.0
    validation_fraction: float = 0.1


def with_weight_norm(model: BigVGAN) -> BigVGAN:
    """BigVGAN as NVIDIA trains it: weight normalisation on every convolution."""
    for module in list(model.modules()):
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            weight_norm(module)
    return model


def find_audio(folder: Path) -> list[Path]:
    """The audio (or video) files to train on: those in `folder`, or — for a dataset folder —
    the training split's source files, found through the dataset's ``sources`` (every folder its videos came from)."""
    if (folder / "dataset.json").is_file():
        from clipsonic.data import Dataset

        dataset = Dataset(folder, split="train")
        paths = [dataset.source_path(record) for record in dataset.records]
        if not dataset.sources or None in paths:
            raise ClipsonicError(f"{folder}: the dataset does not record where its source files are; "
                                 "give their folder instead")
        files = sorted(set(paths))
        missing = [str(path) for path in files if not path.is_file()]
        if missing:
            raise ClipsonicError(f"{folder}: {len(missing)} source file(s) are gone, e.g. {missing[0]}")
        if not files:
            raise ClipsonicError(f"{folder}: the dataset has no training clips")
        return files
    files = find_files(folder, AUDIO_SUFFIXES + VIDEO_SUFFIXES)
    if not files:
        raise ClipsonicError(f"{folder}: no audio or video files ({', '.join(AUDIO_SUFFIXES + VIDEO_SUFFIXES)}) in it")
    return files


class VocoderTask(Task):
    kind = CHECKPOINT_KIND
    version = CHECKPOINT_VERSION

    def __init__(self, folder: str | os.PathLike, config: BigVGANConfig, settings: VocoderTrainingConfig) -> None:
        if settings.segment_samples % config.hop_size:
            raise ParameterError(f"{{option}}: not a multiple of the hop {config.hop_size}", "segment_samples",
                                 settings.segment_samples)
        audio = [load_audio(path, config.sampling_rate) for path in find_audio(Path(folder))]
        joined = torch.cat(audio)
        held_out = max(settings.segment_samples, int(joined.numel() * settings.validation_fraction))
        if joined.numel() < held_out + settings.segment_samples:
            raise ClipsonicError(f"{folder}: {joined.numel() / config.sampling_rate:.1f} s of audio is too little for "
                                 f"segments of {settings.segment_samples} samples plus held-out audio")
        self.training_audio, self.validation_audio = joined[:-held_out], joined[-held_out:]
        self.settings, self.config = settings, config
        self.model = with_weight_norm(BigVGAN(config))
        self.adversary = Discriminators(settings.discriminator_width)
        self.starts = self.training_audio.numel() - settings.segment_samples + 1

    def _segments(self, context: StepContext) -> torch.Tensor:
        """[B, 1, segment] of training audio at random offsets (a fixed grid of offsets, epoch-shuffled)."""
        count = max(1, self.starts // self.config.hop_size)
        picks = epoch_indices(count, context.batch_size, context.step, context.rank, context.world, context.seed)
        jitter = torch.randint(0, self.config.hop_size, (len(picks),), generator=context.generator)
        offsets = [min(p * self.config.hop_size + int(j), self.starts - 1) for p, j in zip(picks, jitter)]
        size = self.settings.segment_samples
        return torch.stack([self.training_audio[o:o + size] for o in offsets])[:, None].to(context.device)

    def _mel(self, wav: torch.Tensor) -> torch.Tensor:
        return mel_spectrogram(wav[:, 0], self.config.mel_config)

    def loss(self, model: nn.Module, context: StepContext) -> StepLoss:
        real = self._segments(context)
        mel = self._mel(real)
        fake = model(mel)
        mel_loss = F.l1_loss(self._mel(fake), mel)
        adversary = self.adversary  # unwrapped: its gradients from this step are discarded before its own
        with torch.no_grad():
            judged_real = adversary(real)
        adversarial, matching = 0.0, 0.0
        for (fake_logits, fake_features), (_, real_features) in zip(adversary(fake), judged_real):
            adversarial = adversarial + torch.mean((1 - fake_logits) ** 2)
            matching = matching + sum(F.l1_loss(f, r.detach()) for f, r in zip(fake_features, real_features))
        return StepLoss(adversarial + self.settings.feature_weight * matching + self.settings.mel_weight * mel_loss,
                        {"mel_l1": float(mel_loss.detach()), "adversarial": float(adversarial.detach())},
                        adversary_batch=(real, fake.detach()))

    def adversary_loss(self, adversary: nn.Module, context: StepContext,
                       batch: tuple[torch.Tensor, torch.Tensor]) -> StepLoss:
        """The discriminators' least-squares loss on this step's real and generated audio."""
        real, fake = batch
        count = real.shape[0]
        # One call on real and fake together: a data-parallel wrapper must see one forward per step.
        judged = adversary(torch.cat([real, fake]))
        loss = sum(torch.mean((1 - logits[:count]) ** 2) + torch.mean(logits[count:] ** 2) for logits, _ in judged)
        return StepLoss(loss, {"discriminator": float(loss.detach())})

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        """Mel-L1 of the generator's reconstruction of the held-out audio."""
        usable = self.validation_audio.numel() // self.config.hop_size * self.config.hop_size
        wav = self.validation_audio[:usable][None, None].to(next(model.parameters()).device)
        mel = self._mel(wav)
        return {"mel_l1": float(F.l1_loss(self._mel(model(mel)), mel))}

    def checkpoint_config(self) -> dict[str, Any]:
        return self.config.to_dict()

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"training": self.settings.to_dict()}
