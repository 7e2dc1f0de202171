"""The paper's model variants (Table 1) and the step they differ in: query -> CLIP embedding.

Every variant conditions the spectrogram UNet on one CLIP embedding per sample; they differ in
what the UNet was trained on and in how a query becomes that embedding (paper §2):

- ``iq``: the CLIP image embedding of a picture (trained and queried with images);
- ``zs``: the CLIP text embedding of the text, put where an image embedding was at training
  (zero-shot modality transfer);
- ``pd`` / ``sd``: an image embedding a diffusion prior draws from the text: LAION's pretrained
  prior (PD) or one trained on the dataset's labels with `train-prior` (SD);
- ``tta``: the CLIP-TTA baseline, a UNet trained on CLIP text embeddings and queried with them;
- ``clap-tta``: the CLAP-TTA baseline, the same with LAION-CLAP text embeddings (512-d) of
  "the sound of [label]", queried with the CLAP embedding of the text.

`VARIANTS` is the one table of them; `query_embeddings` computes any variant's embeddings for a
batch of queries, `label_texts` the texts a variant's queries are made of from dataset labels.
`Pipeline`, `eval`, the demo's quality gate, the trainer and the CLI all go through them.
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
CLAP_TEXT = "clap-text"
# The embeddings a UNet can be trained on: `train --cond`'s names -> what the checkpoint records
# (UNetCheckpointInfo.condition; "image" and "text" are the names older checkpoints use).
CONDITIONS = {"image": IMAGE, "clip-text": TEXT, "clap-text": CLAP_TEXT}
# The paper's CLAP caption of a label: CLAP-TTA's training and query texts, and its CLAP-score prompt.
CLAP_TEMPLATE = "the sound of {label}"


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    paper_name: str  # as the paper's Table 1 names it
    without_pairs: str  # Table 1's "trained without text-audio pairs": yes, no, or - (not applicable)
    trained_on: str  # what the UNet was conditioned on in training: a value of CONDITIONS
    query: str  # what a user gives at inference: IMAGE or TEXT
    prior: str | None = None  # the diffusion prior it draws with, by origin ("laion", "trained"), if any
    label_template: str | None = None  # the caption a dataset label is put in; None: the dataset's own

    @property
    def embedded_by(self) -> str:
        """The model that turns the query into the UNet's condition: "clap" or "clip"."""
        return "clap" if self.trained_on == CLAP_TEXT else "clip"

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
    Variant("clap-tta", "CLAP-TTA", "no", CLAP_TEXT, TEXT, label_template=CLAP_TEMPLATE),
)}
PRIOR_KINDS = {"laion": "LAION's pretrained prior", "trained": "a prior from train-prior"}


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ClipsonicError(f"unknown variant {name!r} (choose from {', '.join(VARIANTS)})")
    return VARIANTS[name]


def missing(variant: Variant, unet_condition: str, prior=None, clap=None) -> ClipsonicError | None:
    """Why a variant cannot run with a UNet trained on `unet_condition` embeddings, `prior` and
    `clap` (a LAION-CLAP model), or None."""
    if variant.trained_on != unet_condition:
        return ClipsonicError(f"variant {variant.name} needs a UNet trained on {variant.trained_on} embeddings; this "
                              f"one was trained on {unet_condition} embeddings")
    if variant.embedded_by == "clap" and clap is None:
        return ParameterError(f"variant {variant.name} needs the LAION-CLAP model ({{option}}) whose text "
                              f"embeddings the UNet was trained on", "clap", None)
    if variant.prior is not None and prior is None:
        return ParameterError(f"variant {variant.name} needs a diffusion prior ({{option}}): "
                              f"{PRIOR_KINDS[variant.prior]}", "prior", None)
    if variant.prior is not None and prior.origin != variant.prior:
        return ClipsonicError(f"variant {variant.name} needs {PRIOR_KINDS[variant.prior]}, but the prior given is "
                              f"{PRIOR_KINDS[prior.origin]}")
    return None


def available(unet_condition: str, prior=None, clap=None) -> list[str]:
    """The variants a UNet trained on `unet_condition` embeddings (and `prior` and `clap`, if any) can generate."""
    return [name for name, variant in VARIANTS.items() if missing(variant, unet_condition, prior, clap) is None]


def default_variant(query: str, unet_condition: str, prior=None, clap=None) -> str:
    """The variant for a query of this modality: the one a prior makes possible, if one is loaded.
    When none can run with the models given, the one the UNet was trained for, so that running it
    (`missing`) says what is lacking."""
    fitting = [variant for variant in VARIANTS.values() if variant.trained_on == unet_condition
               and variant.query == query]
    if not fitting:
        raise ClipsonicError(f"no variant takes a {query} query with a UNet trained on {unet_condition} embeddings")
    usable = [variant for variant in fitting if missing(variant, unet_condition, prior, clap) is None]
    return max(usable or fitting, key=lambda variant: variant.draws_from_prior).name


def label_texts(variant: str | Variant, labels: Sequence[str], template: str) -> list[str]:
    """The text queries of a text variant for dataset `labels`: each label in the variant's own
    caption (CLAP-TTA: "the sound of [label]"), else in `template`, the dataset's ("a photo of
    {label}", `Dataset.text_template`)."""
    chosen = variant if isinstance(variant, Variant) else get_variant(variant)
    if chosen.query != TEXT:
        raise ClipsonicError(f"variant {chosen.name} takes images, not texts")
    return [(chosen.label_template or template).format(label=label) for label in labels]


def query_embeddings(variant: str | Variant, clip, *, texts: Sequence[str] | None = None,
                     images: Sequence[np.ndarray] | None = None, image_embeddings: torch.Tensor | None = None,
                     prior=None, seed: int = 0, batch: int = 16, prior_steps: int = 64,
                     prior_candidates: int = 2, clap=None) -> torch.Tensor:
    """The embeddings [K, D] (float32, on the embedding model's device) a variant conditions the
    UNet on, one per query: CLIP's, or for CLAP-TTA those of `clap` (a LAION-CLAP model; `clip`
    is not used then and may be None).

    Queries are `texts`, or for an image variant `images` (uint8 [H, W, 3] pictures) or their
    CLIP `image_embeddings` [K, D] when already known. Prior variants draw `prior_candidates`
    embeddings per text with `prior_steps` steps and keep the one closest to the text; the draws of
    queries `start` .. `start + batch - 1` use the seed `seed + start`, so a draw depends on the
    query's position and the batch size, never on what else runs."""
    import torch

    with torch.inference_mode():
        return _query_embeddings(variant if isinstance(variant, Variant) else get_variant(variant), clip, texts,
                                 images, image_embeddings, prior, seed, batch, prior_steps, prior_candidates, clap)


def _each_text_once(texts: Sequence[str], encode, batch: int):
    """`encode` (a list of texts -> float rows [n, D]) applied to each distinct text once, in
    batches; the rows [K, D] in the order of `texts`."""
    import torch

    distinct = list(dict.fromkeys(texts))
    encoded = torch.cat([encode(distinct[start:start + batch]).float() for start in range(0, len(distinct), batch)])
    return encoded[torch.tensor([distinct.index(text) for text in texts], device=encoded.device)]


def _query_embeddings(variant: Variant, clip, texts, images, image_embeddings, prior, seed: int, batch: int,
                      prior_steps: int, prior_candidates: int, clap) -> torch.Tensor:
    import torch

    from clipsonic.clip import preprocess_image
    from clipsonic.tokenizer import tokenize

    if variant.query == IMAGE:
        if texts is not None or (images is None) == (image_embeddings is None):
            raise ClipsonicError(f"variant {variant.name} takes images (or their CLIP embeddings), not texts")
        device = next(clip.parameters()).device
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
    if variant.embedded_by == "clap":
        problem = missing(variant, variant.trained_on, clap=clap)
        if problem:
            raise problem
        return _each_text_once(texts, clap.embed_text, batch)
    device = next(clip.parameters()).device
    if variant.prior is None:  # the text embedding itself
        return _each_text_once(texts, lambda part: clip.encode_text(tokenize(part, clip.config.context_length)
                                                                    .to(device)), batch)
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
