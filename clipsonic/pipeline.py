"""Text or image in, audio out: CLIP query -> (prior) -> spectrogram diffusion -> vocoder.

The `clipsonic sample` command is a thin shell over `Pipeline`. Variants (paper §2): ``iq``
conditions on the CLIP embedding of an image, ``zs`` on the CLIP text embedding directly,
``pd`` and ``sd`` on an image embedding that a diffusion prior draws from the text — LAION's
pretrained prior (PD) or one trained on the dataset with `train-prior` (SD). A BigVGAN
vocoder turns the mel into a waveform, or Griffin-Lim when none is given.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import torch

from clipsonic.audio import griffin_lim
from clipsonic.diffusion import GaussianDiffusion, Sampler, classifier_free_guidance
from clipsonic.errors import ClipsonicError

log = logging.getLogger(__name__)
VARIANTS = ("iq", "zs", "pd", "sd")
PRIOR_ORIGIN = {"pd": "laion", "sd": "trained"}


@dataclasses.dataclass
class Pipeline:
    clip: "CLIP"
    spectrogram: "SpectrogramModel"
    prior: "DiffusionPrior | None" = None
    prior_steps: int = 64
    prior_candidates: int = 2
    vocoder: torch.nn.Module | None = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def load(cls, bundle: str | os.PathLike | None = None, *, clip: str | os.PathLike | None = None,
             checkpoint: str | os.PathLike | None = None, prior: str | os.PathLike | None = None,
             prior_config: str | os.PathLike | None = None, vocoder: str | os.PathLike | None = None,
             vocoder_config: str | os.PathLike | None = None, device: torch.device | str = "cpu",
             dtype: torch.dtype | None = None) -> "Pipeline":
        """Load from explicit checkpoint paths, or a bundle folder holding ``clip.pt``, ``unet.pt``
        and optionally ``prior.pt`` and ``vocoder.pt``; with none of them, the shipped demo bundle."""
        from clipsonic.clip import load_clip
        from clipsonic.prior import load_prior
        from clipsonic.unet import load_unet

        if bundle is None and clip is None and checkpoint is None:
            from clipsonic.demo import bundle_folder

            bundle = bundle_folder()
            if not (bundle / "unet.pt").is_file():
                raise ClipsonicError(f"no models given and no demo bundle in {bundle}: pass --clip and --checkpoint "
                                     f"(or --bundle), or build the demo with 'clipsonic demo --retrain'")
            log.info("using the shipped demo bundle (%s: small models trained on synthetic data; pass --bundle or "
                     "--clip/--checkpoint for your own)", bundle)
        if bundle is not None:
            folder = Path(bundle)
            if not folder.is_dir():
                raise ClipsonicError(f"{folder}: not a bundle folder")
            clip = clip or folder / "clip.pt"
            checkpoint = checkpoint or folder / "unet.pt"
            if prior is None and (folder / "prior.pt").is_file():
                prior = folder / "prior.pt"
            if vocoder is None and (folder / "vocoder.pt").is_file():
                vocoder = folder / "vocoder.pt"
        if clip is None or checkpoint is None:
            raise ClipsonicError("no models given: pass a CLIP checkpoint (--clip) and a UNet checkpoint "
                                 "(--checkpoint), or a bundle folder")
        spectrogram = load_unet(checkpoint, dtype=dtype, device=device)
        clip_model = load_clip(clip, dtype=dtype, device=device)
        if clip_model.config.embed_dim != spectrogram.embed_dim:
            raise ClipsonicError(f"{clip}: CLIP embeddings are {clip_model.config.embed_dim}-d but {checkpoint} "
                                 f"was trained on {spectrogram.embed_dim}-d ones: use the CLIP it was trained with")
        prior_model = None
        if prior is not None:
            prior_model = load_prior(prior, prior_config, dtype=dtype, device=device)
            if prior_model.config.net.dim != clip_model.config.text_width or \
                    prior_model.config.image_embed_dim != clip_model.config.embed_dim:
                raise ClipsonicError(f"{prior}: the prior is {prior_model.config.net.dim}-d but {clip} has text width "
                                     f"{clip_model.config.text_width} and {clip_model.config.embed_dim}-d embeddings")
        vocoder_model = None
        if vocoder is not None:
            from clipsonic.vocoder import load_bigvgan

            vocoder_model = load_bigvgan(vocoder, vocoder_config, dtype=dtype, device=device)
            theirs, ours = vocoder_model.config.mel_config, spectrogram.mel_config
            if (theirs.sample_rate, theirs.n_mels, theirs.hop_size) != (ours.sample_rate, ours.n_mels, ours.hop_size):
                raise ClipsonicError(f"{vocoder}: the vocoder expects {theirs.n_mels} mels at {theirs.sample_rate} Hz, hop "
                                     f"{theirs.hop_size}; {checkpoint} makes {ours.n_mels} at {ours.sample_rate} Hz, "
                                     f"hop {ours.hop_size}")
        return cls(clip=clip_model, spectrogram=spectrogram, prior=prior_model, vocoder=vocoder_model,
                   device=torch.device(device))

    @torch.inference_mode()
    def query(self, text: str | None = None, image: np.ndarray | None = None, variant: str = "zs",
              seed: int | None = None) -> torch.Tensor:
        """The CLIP embedding [1, D] the UNet is conditioned on."""
        from clipsonic.clip import preprocess_image
        from clipsonic.tokenizer import tokenize

        if variant not in VARIANTS:
            raise ClipsonicError(f"unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")
        if (text is None) == (image is None):
            raise ClipsonicError("give exactly one of a text or an image")
        if variant == "iq":
            if image is None:
                raise ClipsonicError("variant iq needs an image")
            pixels = preprocess_image(image, self.clip.config.image_resolution)[None].to(self.device)
            return self.clip.encode_image(pixels)
        if text is None:
            raise ClipsonicError(f"variant {variant} needs a text")
        if not text.strip():
            raise ClipsonicError("the text is empty")
        tokens = tokenize([text], self.clip.config.context_length).to(self.device)
        if variant in PRIOR_ORIGIN:
            return self.prior_embedding(tokens, variant, seed)
        return self.clip.encode_text(tokens)

    def prior_embedding(self, tokens: torch.Tensor, variant: str, seed: int | None) -> torch.Tensor:
        """The image embedding [B, D] the prior draws for the texts (best of `prior_candidates`)."""
        from clipsonic.prior import text_condition

        if self.prior is None:
            raise ClipsonicError(f"variant {variant} needs a diffusion prior (--prior)")
        if self.prior.origin != PRIOR_ORIGIN[variant]:
            kinds = {"laion": "LAION's pretrained prior (variant pd)", "trained": "a prior from train-prior (variant sd)"}
            raise ClipsonicError(f"variant {variant} needs {kinds[PRIOR_ORIGIN[variant]]}, but the prior given is "
                                 f"{kinds[self.prior.origin]}")
        text_embed, encodings = text_condition(self.clip, tokens)
        generator = torch.Generator().manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
        return self.prior.sample(text_embed, encodings, self.prior_candidates, self.prior_steps, generator)

    @torch.inference_mode()
    def generate_mel(self, query: torch.Tensor, guidance: float = 1.5, sampler: str = "dpm++", steps: int = 25,
                     seconds: float = 4.0, seed: int | None = None, batch: int = 1,
                     progress: bool = False) -> torch.Tensor:
        """Log-mel spectrograms [batch, n_mels, frames] for one query embedding [1, D], or one per
        spectrogram [batch, D]."""
        if query.shape[0] not in (1, batch):
            raise ValueError(f"{query.shape[0]} queries for a batch of {batch}")
        model = self.spectrogram
        config = model.mel_config
        multiple = model.unet.config.downsampling
        frames = max(multiple, -(-round(seconds * config.sample_rate / config.hop_size) // multiple) * multiple)
        generator = torch.Generator().manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
        noise = torch.randn(batch, 1, config.n_mels, frames, generator=generator).to(self.device)
        eps_fn = classifier_free_guidance(model.unet, query.expand(batch, -1).float().to(self.device), guidance)
        process = GaussianDiffusion.cosine(model.diffusion_steps)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, unit="step", desc=Sampler(sampler).value, dynamic_ncols=True)
        x = process.sample(eps_fn, noise, sampler=sampler, steps=steps, generator=generator,
                           progress=bar.update if bar else None)
        if bar:
            bar.close()
        return model.mel_norm.from_unit(x[:, 0].float())

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
        """iq for an image; for a text sd or pd when a prior is loaded, else zs."""
        if image is not None:
            return "iq"
        if self.prior is not None:
            return "sd" if self.prior.origin == "trained" else "pd"
        return "zs"

    def generate(self, text: str | None = None, image: np.ndarray | None = None, variant: str | None = None,
                 guidance: float = 1.5, sampler: str = "dpm++", steps: int = 25, seconds: float = 4.0,
                 seed: int | None = None, batch: int = 1) -> torch.Tensor:
        """Waveforms [batch, samples] at the model's sample rate (16 kHz), `seconds` long.

        `variant` None picks ``iq`` for an image and the best text variant available otherwise.
        """
        query = self.query(text=text, image=image, variant=variant or self.default_variant(image), seed=seed)
        mel = self.generate_mel(query, guidance, sampler, steps, seconds, seed, batch)
        return self.vocode(mel, seconds, seed=seed or 0)
