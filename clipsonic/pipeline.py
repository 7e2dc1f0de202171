"""Text or image in, audio out: CLIP query -> (prior) -> spectrogram diffusion -> vocoder.

The `clipsonic sample` command is a thin shell over `Pipeline.generate_chunks`. The variants
(iq, zs, pd, sd, tta, clap-tta: paper §2) and how each turns a query into the UNet's condition
are `clipsonic.variants`; a LAION-CLAP model (`clap`) embeds the text of CLAP-TTA. A BigVGAN
vocoder turns the mel into a waveform, or Griffin-Lim when none is given.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from clipsonic.audio import griffin_lim
from clipsonic.diffusion import GaussianDiffusion, Sampler, classifier_free_guidance, guidance_interval
from clipsonic.errors import ClipsonicError
from clipsonic.variants import CLAP_TEXT, IMAGE, TEXT, default_variant, get_variant, missing, query_embeddings

if TYPE_CHECKING:  # the models' classes, for annotations only: loading imports them
    from clipsonic.bundle import Vocabulary
    from clipsonic.clap import CLAP
    from clipsonic.clip import CLIP
    from clipsonic.prior import DiffusionPrior
    from clipsonic.unet import SpectrogramModel

log = logging.getLogger(__name__)

MAX_SECONDS = 60.0  # one sample's longest length: the UNet's attention grows with the square of it
MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds; NumPy's are folded to 32 bits
# Spectrogram frames generated in one UNet batch (16 samples of 4 s): a larger `batch` runs in
# chunks of this many frames, so memory does not grow with the number of samples asked for.
CHUNK_FRAMES = 2048


class SettingError(ClipsonicError):
    """A generation setting outside its range; `parameter` names it (the CLI names the flag)."""

    def __init__(self, parameter: str, value, message: str) -> None:
        super().__init__(f"{parameter} = {value!r}: {message}")
        self.parameter, self.value, self.message = parameter, value, message


PAPER_GUIDANCE = 1.5  # the classifier-free guidance weight when neither the caller nor the bundle names one


def check_settings(guidance: float = PAPER_GUIDANCE, sampler: str = "dpm++", steps: int = 25, seconds: float = 4.0,
                   seed: int | None = None, batch: int = 1, process_steps: int | None = None) -> None:
    """Raise SettingError for the first generation setting outside its range; `process_steps` is
    the model's diffusion length (the most steps any sampler can take), when known."""
    if not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise SettingError("guidance", guidance, "must be a finite number (the paper uses 1.5; 1 = no guidance)")
    if sampler not in {kind.value for kind in Sampler}:
        raise SettingError("sampler", sampler, f"choose from {', '.join(kind.value for kind in Sampler)}")
    if not isinstance(steps, int) or steps < 1 or (process_steps is not None and steps > process_steps):
        bound = f"between 1 and {process_steps}, the model's diffusion length" if process_steps else "at least 1"
        raise SettingError("steps", steps, f"must be {bound}")
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or not 0 < seconds <= MAX_SECONDS:
        raise SettingError("seconds", seconds, f"must be more than 0 and at most {MAX_SECONDS:g}")
    if seed is not None and (not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise SettingError("seed", seed, f"must be an integer from 0 to {MAX_SEED} (2**63 - 1)")
    if not isinstance(batch, int) or batch < 1:
        raise SettingError("batch", batch, "must be at least 1")


def fresh_seed() -> int:
    """A random seed in [0, MAX_SEED], for a run that was given none (and says which it used)."""
    return int(np.random.SeedSequence().generate_state(1, np.uint64)[0] % (MAX_SEED + 1))


class NonFiniteOutput(ClipsonicError):
    """The model produced NaN or Inf: nothing is written."""


def check_finite(values: torch.Tensor, what: str) -> None:
    if not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise NonFiniteOutput(f"the generated {what} has {bad} NaN/Inf value(s) of {values.numel()} "
                              "(nothing written; try fp32 or another seed)")


@dataclasses.dataclass(frozen=True)
class Generated:
    """One chunk of a batch: samples `start` .. `start + len(wav) - 1`."""

    start: int
    mel: torch.Tensor  # [n, n_mels, frames] log-mel
    wav: torch.Tensor  # [n, samples] at the model's sample rate


@dataclasses.dataclass
class Pipeline:
    clip: "CLIP"
    spectrogram: "SpectrogramModel"
    prior: "DiffusionPrior | None" = None
    prior_steps: int = 64
    prior_candidates: int = 2
    vocoder: torch.nn.Module | None = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    demo: bool = False  # loaded as the shipped demo bundle (no models were given)
    vocabulary: "Vocabulary | None" = None  # the sounds a bundle knows, when it lists them: others get a warning
    guidance: float = PAPER_GUIDANCE  # when none is given: the bundle's recommended weight, else the paper's
    clap: "CLAP | None" = None  # LAION-CLAP: embeds CLAP-TTA's text queries (and scores samples: clipsonic.rerank)

    @classmethod
    def load(cls, bundle: str | os.PathLike | None = None, *, clip: str | os.PathLike | None = None,
             checkpoint: str | os.PathLike | None = None, prior: str | os.PathLike | None = None,
             prior_config: str | os.PathLike | None = None, vocoder: str | os.PathLike | None = None,
             vocoder_config: str | os.PathLike | None = None, device: torch.device | str = "cpu",
             dtype: torch.dtype | None = None, clap: str | os.PathLike | None = None,
             clap_tokenizer: str | os.PathLike | None = None) -> "Pipeline":
        """Load from explicit checkpoint paths, or a bundle folder (`clipsonic.bundle`; explicit paths
        take precedence over its files); with none of them, the shipped demo bundle. `clap`: a
        LAION-CLAP checkpoint (`clipsonic.clap.load_clap`; its tokenizer files in `clap_tokenizer`,
        default beside it)."""
        from clipsonic.bundle import load_models, open_bundle, shipped_bundle

        demo = bundle is None and clip is None and checkpoint is None
        if demo:
            bundle = shipped_bundle()
            if not bundle.is_dir():
                raise ClipsonicError(f"no models given and no demo bundle in {bundle}: give a CLIP and a UNet "
                                     f"checkpoint or a bundle, or build the demo (clipsonic.demo.retrain)")
            log.info("using the shipped demo bundle (%s: small models trained on synthetic data; give a bundle or "
                     "a CLIP and UNet checkpoint for your own)", bundle)
        opened = open_bundle(bundle) if bundle is not None else None
        if opened is None and (clip is None or checkpoint is None):
            raise ClipsonicError("no models given: a CLIP checkpoint (clip) and a UNet checkpoint (checkpoint), "
                                 "or a bundle folder (bundle)")
        models = load_models(opened, clip=clip, unet=checkpoint, prior=prior, prior_config=prior_config,
                             vocoder=vocoder, vocoder_config=vocoder_config, dtype=dtype, device=device)
        clip_model, spectrogram, prior_model, vocoder_model = models
        clap_model = None
        if clap is not None:
            from clipsonic.clap import load_clap

            clap_model = load_clap(clap, clap_tokenizer, dtype=dtype, device=device)
            if spectrogram.condition == CLAP_TEXT and clap_model.config.joint_dim != spectrogram.embed_dim:
                raise ClipsonicError(f"{clap}: CLAP embeddings are {clap_model.config.joint_dim}-d but the UNet was "
                                     f"trained on {spectrogram.embed_dim}-d ones: use the CLAP it was trained with")
        return cls(clip=clip_model, spectrogram=spectrogram, prior=prior_model, vocoder=vocoder_model,
                   device=torch.device(device), demo=demo,
                   vocabulary=opened.vocabulary if opened is not None else None,
                   guidance=opened.guidance if opened is not None and opened.guidance is not None else PAPER_GUIDANCE,
                   clap=clap_model)

    def query(self, text: str | None = None, image: np.ndarray | None = None, variant: str = "zs",
              seed: int | None = None) -> torch.Tensor:
        """The embedding [1, D] the UNet is conditioned on (`clipsonic.variants.query_embeddings`)."""
        chosen = get_variant(variant)
        if (text is None) == (image is None):
            raise ClipsonicError("give exactly one of a text or an image")
        problem = missing(chosen, self.spectrogram.condition, self.prior, self.clap)
        if problem:
            raise problem
        return query_embeddings(chosen, self.clip, texts=None if text is None else [text],
                                images=None if image is None else [image], prior=self.prior,
                                seed=seed if seed is not None else fresh_seed(), prior_steps=self.prior_steps,
                                prior_candidates=self.prior_candidates, clap=self.clap)

    @torch.inference_mode()
    def generate_mel(self, query: torch.Tensor, guidance: float = PAPER_GUIDANCE, sampler: str = "dpm++", steps: int = 25,
                     seconds: float = 4.0, seed: int | None = None, batch: int = 1,
                     progress: bool | Callable[[int], None] = False,
                     interval: tuple[float, float] | None = None) -> torch.Tensor:
        """Log-mel spectrograms [batch, n_mels, frames] for one query embedding [1, D], or one per
        spectrogram [batch, D]. `progress`: True for a tqdm bar, or a callable told each step."""
        if query.shape[0] not in (1, batch):
            raise ValueError(f"{query.shape[0]} queries for a batch of {batch}")
        model = self.spectrogram
        config = model.mel_config
        frames = self.frames(seconds)
        generator = torch.Generator().manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
        noise = torch.randn(batch, 1, config.n_mels, frames, generator=generator).to(self.device)
        process = GaussianDiffusion.cosine(model.diffusion_steps, model.prediction)
        active = None if interval is None else guidance_interval(process, *interval)
        net_fn = classifier_free_guidance(model.unet, query.expand(batch, -1).float().to(self.device), guidance, active)
        bar = None
        if progress is True:
            from tqdm import tqdm

            bar = tqdm(total=steps, unit="step", desc=Sampler(sampler).value, dynamic_ncols=True)
        x = process.sample(net_fn, noise, sampler=sampler, steps=steps, generator=generator,
                           progress=bar.update if bar else progress or None)
        if bar:
            bar.close()
        return model.mel_norm.from_unit(x[:, 0].float())

    def frames(self, seconds: float) -> int:
        """Spectrogram frames generated for `seconds` of audio (whole UNet blocks)."""
        config, multiple = self.spectrogram.mel_config, self.spectrogram.unet.config.downsampling
        return max(multiple, -(-round(seconds * config.sample_rate / config.hop_size) // multiple) * multiple)

    def chunk_size(self, seconds: float) -> int:
        """Samples generated in one UNet batch for `seconds`-long audio (see CHUNK_FRAMES)."""
        return max(1, CHUNK_FRAMES // self.frames(seconds))

    def vocode(self, log_mel: torch.Tensor, seconds: float | None = None, seed: int = 0) -> torch.Tensor:
        """Waveforms [batch, samples] from log-mels [batch, n_mels, frames]: frames * hop samples, or
        the first `seconds` of them."""
        if self.vocoder is not None:
            with torch.inference_mode():
                wav = self.vocoder(log_mel.to(self.device))[:, 0].float().cpu()
        else:
            wav = griffin_lim(log_mel.cpu(), self.spectrogram.mel_config, seed=seed)
        return wav if seconds is None else wav[:, : round(seconds * self.spectrogram.mel_config.sample_rate)]

    def default_variant(self, image: np.ndarray | None) -> str:
        """iq for an image; for a text the variant the loaded prior makes possible (sd, pd), else zs
        (tta, clap-tta for a UNet trained on CLIP, CLAP text embeddings)."""
        return default_variant(IMAGE if image is not None else TEXT, self.spectrogram.condition, self.prior,
                               self.clap)

    def unfamiliar_prompt(self, text: str) -> str | None:
        """A warning for a text far from every sound the bundle lists (the demo's eight), else None."""
        return None if self.vocabulary is None else self.vocabulary.unfamiliar(self.clip, text)

    def generate_chunks(self, text: str | None = None, image: np.ndarray | None = None, variant: str | None = None,
                        guidance: float | None = None, sampler: str = "dpm++", steps: int = 25, seconds: float = 4.0,
                        seed: int | None = None, batch: int = 1,
                        progress: Callable[[int], None] | None = None) -> Iterator[Generated]:
        """`generate`, a chunk of at most `chunk_size(seconds)` samples at a time, so that a large
        batch can be written as it comes. NaN/Inf in a mel or waveform raises NonFiniteOutput.

        The first chunk uses `seed` itself (a batch that fits one chunk is the same as before
        chunking existed); chunk k > 0 a seed derived from (seed, k). `guidance`: default `self.guidance`."""
        variant = variant or self.default_variant(image)
        guidance = self.guidance if guidance is None else guidance
        check_settings(guidance, sampler, steps, seconds, seed, batch, self.spectrogram.diffusion_steps)
        if seed is None:
            seed = fresh_seed()
        if text is not None:
            warning = self.unfamiliar_prompt(text)
            if warning:
                log.warning("%s", warning)
        query = self.query(text=text, image=image, variant=variant, seed=seed)
        size = self.chunk_size(seconds)
        for index, start in enumerate(range(0, batch, size)):
            chunk_seed = seed if index == 0 else \
                int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] % (MAX_SEED + 1))
            mel = self.generate_mel(query, guidance, sampler, steps, seconds, chunk_seed, min(size, batch - start),
                                    progress=progress or False)
            check_finite(mel, "spectrogram")
            wav = self.vocode(mel, seconds, seed=chunk_seed)
            check_finite(wav, "waveform")
            yield Generated(start, mel, wav)

    def generate(self, text: str | None = None, image: np.ndarray | None = None, variant: str | None = None,
                 guidance: float | None = None, sampler: str = "dpm++", steps: int = 25, seconds: float = 4.0,
                 seed: int | None = None, batch: int = 1) -> torch.Tensor:
        """Waveforms [batch, samples] at the model's sample rate (16 kHz), `seconds` long, at the
        model's own level (not normalised; `clipsonic.audio.playable` prepares them for a file).

        `variant` None picks ``iq`` for an image and the best text variant available otherwise.
        Settings outside their range raise SettingError naming the parameter.
        """
        chunks = self.generate_chunks(text, image, variant, guidance, sampler, steps, seconds, seed, batch)
        return torch.cat([chunk.wav for chunk in chunks])
