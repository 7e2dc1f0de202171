"""A bundle: the models `sample` and `eval` load together, in one folder, checked at load.

Layout::

    bundle.json   {"format": "clipsonic.bundle", "version": 1, "files": {role: {"file", "sha256", "size"}},
                   "vocabulary": {"labels", "template", "similarity_floor"} | null,
                   "sampling": {"guidance": w} (optional), "made": ISO time}
    clip.pt       the CLIP the UNet was trained with (ours; `make_bundle` converts OpenAI's and others)
    unet.pt       the spectrogram UNet, EMA weights only (`export_for_sampling` of a training run)
    prior.pt      optional: a diffusion prior (ours, or LAION's converted)
    vocoder.pt    optional: a BigVGAN (ours, or NVIDIA's converted); without it, Griffin-Lim
    vggish.pt     optional: the audio embedding `eval`'s FAD uses when no --vggish is given (ours:
                  the demo bundle's VGGish trained on its own classes; torchvggish's converted)
    tta.pt        optional: a UNet trained on text embeddings (`train --cond clip-text` or
                  clap-text), `eval`'s CLIP-TTA / CLAP-TTA baseline row when no --tta-checkpoint is given

Each file's sha256 is checked against bundle.json when the bundle is opened: a changed or
damaged file is an error naming it. A folder without bundle.json (assembled by hand before
bundles had one) still loads, by the file names, with a warning that nothing was checked.

A bundle that knows only a few sounds (the shipped demo) lists them as its `vocabulary`: a text
far from every one of them gets a warning (`Vocabulary.unfamiliar`). A bundle may recommend a
classifier-free guidance weight (`sampling.guidance`), which `sample` and `eval` use when no
--guidance is given (the demo's is the weight its quality gate measured).

`make_bundle` builds a bundle from checkpoints in any layout the loaders read, in a staging
folder renamed into place once every model has loaded and fits the others, so a failed make
leaves no half bundle. `shipped_bundle` is where the package keeps its demo bundle.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

from clipsonic.errors import CheckpointError, ClipsonicError
from clipsonic.fileio import write_json_atomic

log = logging.getLogger(__name__)
BUNDLE_FORMAT = "clipsonic.bundle"
BUNDLE_VERSION = 1
MANIFEST_NAME = "bundle.json"
# role -> file name in the folder; clip and unet are required
FILES = {"clip": "clip.pt", "unet": "unet.pt", "prior": "prior.pt", "vocoder": "vocoder.pt",
         "vggish": "vggish.pt",  # vggish: an audio embedding for `eval` (the demo bundle's own)
         "tta": "tta.pt"}  # tta: a text-conditioned UNet, `eval`'s baseline row
REQUIRED = ("clip", "unet")


def shipped_bundle() -> Path:
    """Where the shipped demo bundle lives (beside the weights manifest, inside the installed package)."""
    from clipsonic.manifest import shipped_folder

    return shipped_folder() / "demo"


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """The sounds a bundle was trained on, for a warning when a text is far from all of them."""

    labels: tuple[str, ...]
    template: str = "a photo of {label}"
    similarity_floor: float = 0.9  # cosine between CLIP text embeddings below which a text is unfamiliar

    def unfamiliar(self, clip, text: str) -> str | None:
        """A one-line warning when `text` is far (cosine < `similarity_floor`) from the CLIP text embedding
        of every label's caption, naming the labels and the nearest; None otherwise."""
        import torch

        from clipsonic.tokenizer import tokenize

        captions = [self.template.format(label=label) for label in self.labels]
        tokens = tokenize([text, *captions], clip.config.context_length).to(next(clip.parameters()).device)
        with torch.inference_mode():
            embeddings = torch.nn.functional.normalize(clip.encode_text(tokens).float(), dim=-1)
        similarity = embeddings[1:] @ embeddings[0]  # [labels]
        nearest = int(similarity.argmax())
        if similarity[nearest] >= self.similarity_floor:
            return None
        name = self.labels[nearest]
        return (f"the bundle knows only {len(self.labels)} sounds ({', '.join(self.labels)}); {text!r} is far from "
                f"all of them (nearest: {name}, cosine {float(similarity[nearest]):.2f}), so expect noise or {name}: "
                f"train on your own videos for other sounds")


@dataclasses.dataclass(frozen=True)
class Bundle:
    folder: Path
    files: dict[str, Path]  # role -> file, for the roles present
    vocabulary: Vocabulary | None = None
    verified: bool = True  # False: a folder without bundle.json, loaded by file names unchecked
    guidance: float | None = None  # the recommended guidance weight, when the bundle names one

    def path(self, role: str) -> Path | None:
        return self.files.get(role)


def _sha256(path: Path) -> str:
    from clipsonic.manifest import sha256_file

    return sha256_file(path)


def open_bundle(folder: str | os.PathLike) -> Bundle:
    """The bundle in `folder`, every file checked against bundle.json (size, then sha256)."""
    root = Path(folder)
    if not root.is_dir():
        raise ClipsonicError(f"{root}: not a bundle folder")
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        files = {role: root / name for role, name in FILES.items() if (root / name).is_file()}
        missing = [FILES[role] for role in REQUIRED if role not in files]
        if missing:
            raise ClipsonicError(f"{root}: not a bundle folder (no {MANIFEST_NAME}, no {' or '.join(missing)})")
        log.warning("%s: has no %s, so its files are not checked (make it with 'clipsonic bundle make')", root,
                    MANIFEST_NAME)
        return Bundle(root, files, verified=False)
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ClipsonicError(f"{manifest}: unreadable ({error})") from None
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise ClipsonicError(f"{manifest}: not a clipsonic bundle description")
    if data.get("version", 0) > BUNDLE_VERSION:
        raise ClipsonicError(f"{manifest}: bundle version {data['version']} is newer than this clipsonic reads "
                             f"(up to {BUNDLE_VERSION})")
    files = {}
    for role, entry in data.get("files", {}).items():
        path = root / entry["file"]
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in {manifest} but missing")
        if path.stat().st_size != entry["size"] or _sha256(path) != entry["sha256"]:
            raise CheckpointError(f"{path}: differs from what {manifest} records (changed or damaged); "
                                  f"make the bundle again")
        files[role] = path
    missing = [role for role in REQUIRED if role not in files]
    if missing:
        raise ClipsonicError(f"{manifest}: lists no {' or '.join(missing)} model")
    vocabulary = data.get("vocabulary")
    if vocabulary is not None:
        vocabulary = Vocabulary(tuple(vocabulary["labels"]), vocabulary.get("template", Vocabulary.template),
                                float(vocabulary.get("similarity_floor", Vocabulary.similarity_floor)))
    guidance = (data.get("sampling") or {}).get("guidance")
    if guidance is not None and not (isinstance(guidance, (int, float)) and math.isfinite(guidance) and guidance >= 0):
        raise ClipsonicError(f"{manifest}: sampling.guidance {guidance!r} is not a non-negative number")
    return Bundle(root, files, vocabulary, guidance=None if guidance is None else float(guidance))


def write_manifest(folder: str | os.PathLike, vocabulary: Vocabulary | None = None,
                   guidance: float | None = None) -> Path:
    """bundle.json for the model files in `folder` (their sha256 and size as they are now)."""
    root = Path(folder)
    files = {role: {"file": name, "sha256": _sha256(root / name), "size": (root / name).stat().st_size}
             for role, name in FILES.items() if (root / name).is_file()}
    data = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "files": files,
            "vocabulary": None if vocabulary is None else {**dataclasses.asdict(vocabulary),
                                                           "labels": list(vocabulary.labels)},
            **({} if guidance is None else {"sampling": {"guidance": float(guidance)}}),
            "made": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json_atomic(root / MANIFEST_NAME, data)
    return root / MANIFEST_NAME


def load_models(bundle: Bundle | None = None, *, clip=None, unet=None, prior=None, prior_config=None, vocoder=None,
                vocoder_config=None, dtype=None, device="cpu"):
    """(CLIP, SpectrogramModel, prior or None, vocoder or None), from `bundle`'s files or the paths
    given (which take precedence), checked to fit each other: the CLIP's embeddings are what the
    UNet was trained on, the prior works in that CLIP's spaces, the vocoder reads the UNet's mels."""
    from clipsonic.clip import load_clip
    from clipsonic.unet import load_unet

    if bundle is not None:
        clip, unet = clip or bundle.path("clip"), unet or bundle.path("unet")
        prior, vocoder = prior or bundle.path("prior"), vocoder or bundle.path("vocoder")
    if clip is None or unet is None:
        raise ClipsonicError("no models given: a CLIP checkpoint (clip) and a UNet checkpoint (unet), or a bundle")
    spectrogram = load_unet(unet, dtype=dtype, device=device)
    clip_model = load_clip(clip, dtype=dtype, device=device)
    from clipsonic.variants import CLAP_TEXT

    # A CLAP-TTA UNet is conditioned on CLAP's embeddings (`Pipeline.load` checks their width).
    if spectrogram.condition != CLAP_TEXT and clip_model.config.embed_dim != spectrogram.embed_dim:
        raise ClipsonicError(f"{clip}: CLIP embeddings are {clip_model.config.embed_dim}-d but {unet} was trained on "
                             f"{spectrogram.embed_dim}-d ones: use the CLIP it was trained with")
    prior_model = None
    if prior is not None:
        from clipsonic.prior import load_prior

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
                                 f"{theirs.hop_size}; {unet} makes {ours.n_mels} at {ours.sample_rate} Hz, "
                                 f"hop {ours.hop_size}")
    return clip_model, spectrogram, prior_model, vocoder_model


def load_tta(path: str | os.PathLike, clip_model, dtype=None, device="cpu"):
    """The text-conditioned baseline UNet in `path` (CLIP-TTA or CLAP-TTA), checked to be one and,
    for CLIP-TTA, to be conditioned on `clip_model`'s embeddings."""
    from clipsonic.unet import load_unet
    from clipsonic.variants import CLAP_TEXT, TEXT

    unet = load_unet(path, dtype=dtype, device=device)
    if unet.condition not in (TEXT, CLAP_TEXT):
        raise ClipsonicError(f"{path}: not a text-conditioned UNet (a CLIP-TTA or CLAP-TTA baseline); "
                             f"it was trained on {unet.condition} embeddings")
    if unet.condition == TEXT and unet.embed_dim != clip_model.config.embed_dim:
        raise ClipsonicError(f"{path}: trained on {unet.embed_dim}-d CLIP text embeddings, but the CLIP's are "
                             f"{clip_model.config.embed_dim}-d: use the CLIP it was trained with")
    return unet


def make_bundle(out: str | os.PathLike, clip: str | os.PathLike, unet: str | os.PathLike, *,
                prior: str | os.PathLike | None = None, prior_config: str | os.PathLike | None = None,
                vocoder: str | os.PathLike | None = None, vocoder_config: str | os.PathLike | None = None,
                vggish: str | os.PathLike | None = None, tta: str | os.PathLike | None = None,
                vocabulary: Vocabulary | None = None, guidance: float | None = None) -> Bundle:
    """Build the bundle `out` from checkpoints in any layout the loaders read: CLIP, prior and
    vocoder converted to ours (each reloaded and compared tensor by tensor), the UNet's training
    checkpoint stripped to what sampling needs. An existing bundle in `out` is replaced at once."""
    from clipsonic.checkpoint import verify_reload
    from clipsonic.clip import load_clip, save_clip
    from clipsonic.train.loop import export_for_sampling

    target = Path(out)
    if target.exists() and not target.is_dir():
        raise ClipsonicError(f"{target}: exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST_NAME).is_file():
        raise ClipsonicError(f"{target}: holds other files and no {MANIFEST_NAME}; use a new or empty folder")
    staging = target.with_name(f".{target.name}.new-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        model = load_clip(clip)
        verify_reload(model, load_clip(save_clip(staging / FILES["clip"], model)), staging / FILES["clip"], clip)
        export_for_sampling(unet, staging / FILES["unet"], "unet")
        if prior is not None:
            from clipsonic.prior import load_prior, save_prior

            model = load_prior(prior, prior_config)
            verify_reload(model, load_prior(save_prior(staging / FILES["prior"], model)), staging / FILES["prior"],
                          prior)
        if vocoder is not None:
            from clipsonic.vocoder import load_bigvgan, save_bigvgan

            model = load_bigvgan(vocoder, vocoder_config)
            verify_reload(model, load_bigvgan(save_bigvgan(staging / FILES["vocoder"], model)),
                          staging / FILES["vocoder"], vocoder)
        if vggish is not None:
            from clipsonic.vggish import load_vggish, save_vggish

            model = load_vggish(vggish)
            verify_reload(model, load_vggish(save_vggish(staging / FILES["vggish"], model)), staging / FILES["vggish"],
                          vggish)
        if tta is not None:
            export_for_sampling(tta, staging / FILES["tta"], "unet")
        clip_model = load_models(Bundle(staging, {role: staging / name for role, name in FILES.items()
                                                  if (staging / name).is_file()}))[0]
        if tta is not None:
            load_tta(staging / FILES["tta"], clip_model)
        write_manifest(staging, vocabulary, guidance)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return open_bundle(target)
