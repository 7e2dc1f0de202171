"""The paper's model variants (Table 1) and the step they differ in: query -> CLIP embedding.

Every variant conditions the spectrogram UNet on one CLIP embedding per sample; they differ in
what the UNet was trained on and in how a query becomes that embedding (paper §2):

- ``iq``: the CLIP image embedding of a picture (trained and queried with images);
- ``zs``: the CLIP text embedding of the text, put where an image embedding was at training
  (zero-shot modality transfer);
- ``pd`` / ``sd``: an image embedding a diffusion prior draws from the text: LAION's pretrained
  prior (PD) or one trained on the dataset's labels with `train-prior` (SD);
- ``tta``: the CLIP-TTA baseline, a UNet trained on text embeddings and queried with them.

`VARIANTS` is the one table of them; `query_embeddings` computes any variant's embeddings for a
batch of queries. `Pipeline`, `eval`, the demo's quality gate and the CLI all go through both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from clipsonic.errors import ClipsonicError, ParameterError

if TYPE_CHECKING:  # the table is read without torch (the CLI's choices); the computation needs it
    import numpy as np
    import torch

IMAGE, TEXT = "image", "text"


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    paper_name: str  # as the paper's Table 1 names it
    without_pairs: str  # Table 1's "trained without text-audio pairs": yes, no, or - (not applicable)
    trained_on: str  # what the UNet was conditioned on in training: IMAGE or TEXT embeddings
    query: str  # what a user gives at inference: IMAGE or TEXT
    prior: str | None = None  # the diffusion prior it draws with, by origin ("laion", "trained"), if any

    @property
    def short_name(self) -> str:
        """The paper name without its gloss: "CLIPSonic-SD"."""
        return self.paper_name.split(" (")[0]

    @property
    def draws_from_prior(self) -> bool:
        return self.prior is not None


VARIANTS: dict[str, Variant] = {variant.name: variant for variant in (
    Variant("iq", "CLIPSonic-IQ (image-queried)", "-", IMAGE, IMAGE),
    Variant("zs", "CLIPSonic-ZS (zero-shot modality transfer)", "yes", IMAGE, TEXT),
    Variant("pd", "CLIPSonic-PD (pretrained diffusion prior)", "yes", IMAGE, TEXT, prior="laion"),
    Variant("sd", "CLIPSonic-SD (supervised diffusion prior)", "no", IMAGE, TEXT, prior="trained"),
    Variant("tta", "CLIP-TTA", "no", TEXT, TEXT),
)}
PRIOR_KINDS = {"laion": "LAION's pretrained prior", "trained": "a prior from train-prior"}


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ClipsonicError(f"unknown variant {name!r} (choose from {', '.join(VARIANTS)})")
    return VARIANTS[name]


def missing(variant: Variant, unet_condition: str, prior=None) -> ClipsonicError | None:
    """Why a variant cannot run with a UNet trained on `unet_condition` embeddings and `prior`, or None."""
    if variant.trained_on != unet_condition:
        return ClipsonicError(f"variant {variant.name} needs a UNet trained on {variant.trained_on} embeddings; this "
                              f"one was trained on {unet_condition} embeddings")
    if variant.prior is not None and prior is None:
        return ParameterError(f"variant {variant.name} needs a diffusion prior ({{option}}): "
                              f"{PRIOR_KINDS[variant.prior]}", "prior", None)
    if variant.prior is not None and prior.origin != variant.prior:
        return ClipsonicError(f"variant {variant.name} needs {PRIOR_KINDS[variant.prior]}, but the prior given is "
                              f"{PRIOR_KINDS[prior.origin]}")
    return None


def available(unet_condition: str, prior=None) -> list[str]:
    """The variants a UNet trained on `unet_condition` embeddings (and `prior`, if any) can generate."""
    return [name for name, variant in VARIANTS.items() if missing(variant, unet_condition, prior) is None]


def default_variant(query: str, unet_condition: str, prior=None) -> str:
    """The variant for a query of this modality: the one a prior makes possible, if one is loaded."""
    usable = [VARIANTS[name] for name in available(unet_condition, prior) if VARIANTS[name].query == query]
    if not usable:
        raise ClipsonicError(f"no variant takes a {query} query with a UNet trained on {unet_condition} embeddings")
    return max(usable, key=lambda variant: variant.draws_from_prior).name


def query_embeddings(variant: str | Variant, clip, *, texts: Sequence[str] | None = None,
                     images: Sequence[np.ndarray] | None = None, image_embeddings: torch.Tensor | None = None,
                     prior=None, seed: int = 0, batch: int = 16, prior_steps: int = 64,
                     prior_candidates: int = 2) -> torch.Tensor:
    """The CLIP embeddings [K, D] (float32, on CLIP's device) a variant conditions the UNet on, one per query.

    Queries are `texts`, or for an image variant `images` (uint8 [H, W, 3] pictures) or their
    CLIP `image_embeddings` [K, D] when already known. Prior variants draw `prior_candidates`
    embeddings per text with `prior_steps` steps and keep the one closest to the text; the draws of
    queries `start` .. `start + batch - 1` use the seed `seed + start`, so a draw depends on the
    query's position and the batch size, never on what else runs."""
    import torch

    with torch.inference_mode():
        return _query_embeddings(variant if isinstance(variant, Variant) else get_variant(variant), clip, texts,
                                 images, image_embeddings, prior, seed, batch, prior_steps, prior_candidates)


def _query_embeddings(variant: Variant, clip, texts, images, image_embeddings, prior, seed: int, batch: int,
                      prior_steps: int, prior_candidates: int) -> torch.Tensor:
    import torch

    from clipsonic.clip import preprocess_image
    from clipsonic.tokenizer import tokenize

    device = next(clip.parameters()).device
    if variant.query == IMAGE:
        if texts is not None or (images is None) == (image_embeddings is None):
            raise ClipsonicError(f"variant {variant.name} takes images (or their CLIP embeddings), not texts")
        if image_embeddings is not None:
            return image_embeddings.float().to(device)
        size = clip.config.image_resolution
        rows = [clip.encode_image(torch.stack([preprocess_image(image, size) for image in images[start:start + batch]])
                                  .to(device)).float() for start in range(0, len(images), batch)]
        return torch.cat(rows)
    if texts is None or images is not None or image_embeddings is not None:
        raise ClipsonicError(f"variant {variant.name} takes texts, not images")
    if any(not text.strip() for text in texts):
        raise ClipsonicError("a text query is empty")
    if variant.prior is None:  # the text embedding itself; each distinct text encoded once
        distinct = list(dict.fromkeys(texts))
        encoded = torch.cat([clip.encode_text(tokenize(distinct[start:start + batch], clip.config.context_length)
                                              .to(device)).float() for start in range(0, len(distinct), batch)])
        return encoded[torch.tensor([distinct.index(text) for text in texts], device=encoded.device)]
    problem = missing(variant, variant.trained_on, prior)
    if problem:
        raise problem
    from clipsonic.prior import text_condition

    draws = []
    for start in range(0, len(texts), batch):
        tokens = tokenize(list(texts[start:start + batch]), clip.config.context_length).to(device)
        text_embed, encodings = text_condition(clip, tokens)
        generator = torch.Generator().manual_seed(seed + start)
        draws.append(prior.sample(text_embed, encodings, prior_candidates, prior_steps, generator).float())
    return torch.cat(draws)
