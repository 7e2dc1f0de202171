"""The demo bundle: small models trained on the synthetic data, shipped so `sample` works offline.

`retrain` rebuilds it from nothing, with the same steps a user takes on real videos:
synthetic videos (`clipsonic.synthetic`) -> a small CLIP trained contrastively on their pictures
and captions (`clipsonic.contrastive`) -> `preprocess` -> the spectrogram UNet (`train`) -> the
SD prior (`train-prior`) -> a bundle (`clipsonic.bundle`: clip.pt, unet.pt, prior.pt, bundle.json
listing the eight sounds as its vocabulary) with demo.json (recipe, timings, gate). Griffin-Lim
is its vocoder (see README: a BigVGAN small enough to train here did not beat it).

`quality_gate` measures what the bundle generates: for each class, samples from the text
"a photo of [class]" (SD and ZS) and from a picture of the class no training clip showed (IQ)
are assigned to the nearest class centroid of real clips no model saw (`reference_clips`: 32 per
class, made for the gate); the gate asks for 80 % per class for SD and IQ. Features: the mean
log-mel spectrum, level removed (`mel_features`), of the re-analysed waveform, so the vocoder is
part of what is measured. The same classifier on the data set's own real clips ("real") is the
ceiling the generated clips are held to.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from clipsonic.bundle import make_bundle, open_bundle, shipped_bundle
from clipsonic.config import Config
from clipsonic.errors import ClipsonicError
from clipsonic.fileio import write_json_atomic

log = logging.getLogger(__name__)
GATE_VARIANTS = ("sd", "iq", "zs")
REAL = "real"  # the classifier on the data set's real clips
GATE_THRESHOLD = 0.8  # per class, for SD and IQ


@dataclasses.dataclass(frozen=True)
class DemoRecipe(Config):
    seed: int = 0
    clips_per_class: int = 20
    clip_steps: int = 300
    clip_batch: int = 64
    clip_lr: float = 1e-3
    unet_preset: str = "demo"
    unet_steps: int = 2200
    unet_batch: int = 16
    unet_lr: float = 1e-3  # short runs of small models: the paper's 1e-4 would need many more steps
    crop_frames: int = 32  # 1 s: half the paper's window, twice the steps in the same time
    prior_steps: int = 1000
    prior_batch: int = 64
    prior_lr: float = 1e-3  # at 3e-4 the tiny prior's loss had not left its plateau after 1500 steps
    ema: float = 0.99  # at 0.999 a third of the EMA would still be the initial weights after 1100 steps
    gate_samples: int = 16
    gate_seconds: float = 4.0
    gate_guidance: float = 1.5
    gate_steps: int = 25
    gate_dtype: str = "bf16"  # the gate's generation precision (bf16: 3-4x faster on CPUs with AMX)
    # The classifier's centroids: with the 4 test clips per class, a bell's pitch (which varies by
    # an octave) made the centroid a guess, and only half the real bells were recognised.
    gate_reference_clips: int = 32

    PRESETS = {"demo": {}, "smoke": {"clips_per_class": 3, "clip_steps": 4, "clip_batch": 8, "unet_preset": "tiny",
                                     "unet_steps": 2, "unet_batch": 2, "prior_steps": 2, "prior_batch": 4,
                                     "gate_samples": 1, "gate_seconds": 1.0, "gate_steps": 2,
                                     "gate_reference_clips": 2}}


CAPTION_TEMPLATES = ("a photo of {label}", "a picture of {label}", "{label}", "a video frame of {label}")

# The demo CLIP learned the class words and the caption templates only; any other word lands
# anywhere in its text space. Measured on the shipped bundle: the texts of its classes in other
# words ("heavy rain", "a church bell", "a ticking clock", "the sound of rain") come within a
# cosine of 0.92-1.0 of their class caption; texts of other sounds ("a photo of a dog barking",
# "applause", "a photo of the ocean", "piano music") reach at most 0.82.
PROMPT_SIMILARITY_FLOOR = 0.9


def demo_vocabulary():
    """The demo bundle's sounds, as its bundle.json lists them (texts far from all get a warning)."""
    from clipsonic.bundle import Vocabulary
    from clipsonic.synthetic import CLASSES

    return Vocabulary(tuple(CLASSES), CAPTION_TEMPLATES[0], PROMPT_SIMILARITY_FLOOR)


def picture_pool(specs, size: int, frames_per_clip: int = 6) -> tuple[np.ndarray, list[str]]:
    """CLIP-sized training pictures from the training clips' picture tracks, with their labels."""
    from clipsonic.imageproc import resize_center_crop
    from clipsonic.synthetic import clip_frames

    pictures, labels = [], []
    for spec in specs:
        frames = clip_frames(spec)
        for index in np.linspace(0, len(frames) - 1, frames_per_clip).round().astype(int):
            pictures.append(resize_center_crop(torch.from_numpy(frames[index]), size).numpy())
            labels.append(spec.label)
    return np.stack(pictures), labels


def train_demo_clip(specs, recipe: DemoRecipe, progress: bool = False):
    """A small CLIP trained contrastively on the training clips' pictures and captions of their class."""
    from clipsonic.clip import CLIP, CLIPConfig
    from clipsonic.contrastive import train_contrastive

    torch.manual_seed(recipe.seed)
    model = CLIP(CLIPConfig.preset("demo"))
    pictures, labels = picture_pool(specs, model.config.image_resolution)

    def batches(rng: np.random.Generator, size: int):
        picks = rng.integers(0, len(pictures), size)
        flips = rng.random(size) < 0.5
        chosen = np.where(flips[:, None, None, None], pictures[picks][:, :, ::-1], pictures[picks])
        captions = [CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))].format(label=labels[i]) for i in picks]
        return np.ascontiguousarray(chosen), captions

    bar = _bar(recipe.clip_steps, "clip", progress)
    train_contrastive(model, batches, recipe.clip_steps, recipe.clip_batch, recipe.clip_lr, seed=recipe.seed,
                      progress=(lambda step, loss: bar.update(1) or bar.set_postfix(loss=f"{loss:.3f}",
                                                                                     refresh=False)) if bar else None)
    if bar:
        bar.close()
    return model


def _bar(total: int, name: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="step", desc=name, dynamic_ncols=True)


def retrain(work: str | os.PathLike, out: str | os.PathLike | None = None, recipe: DemoRecipe = DemoRecipe(),
            workers: int = 2, progress: bool = False) -> dict:
    """Rebuild the demo bundle in `out` (default: the shipped folder), working in `work` (resumable:
    finished stages are kept). Returns demo.json's content."""
    from clipsonic.clip import load_clip, save_clip
    from clipsonic.data import Dataset
    from clipsonic.labels import read_labels
    from clipsonic.preprocess import PreprocessConfig, preprocess
    from clipsonic.prior import PriorConfig
    from clipsonic.synthetic import make_demo_data, plan_clips
    from clipsonic.train_diffusion import DiffusionTask, DiffusionTrainingConfig
    from clipsonic.train_prior import PriorTask
    from clipsonic.trainloop import CHECKPOINT_NAME, TrainConfig, train
    from clipsonic.unet import UNetConfig

    work, out = Path(work), Path(out) if out is not None else shipped_bundle()
    work.mkdir(parents=True, exist_ok=True)
    started, timings = time.perf_counter(), {}

    def stage(name: str) -> None:
        timings[name] = round(time.perf_counter() - started - sum(timings.values()), 1)
        log.info("demo: %s done (%.0f s)", name, timings[name])

    data = make_demo_data(work / "data", recipe.clips_per_class, recipe.seed, workers=workers, progress=progress)
    stage("synthetic data")
    train_specs = [spec for spec in plan_clips(recipe.clips_per_class, recipe.seed) if spec.split == "train"]
    clip_path = work / "clip.pt"
    if not clip_path.is_file():
        save_clip(clip_path, train_demo_clip(train_specs, recipe, progress))
    clip = load_clip(clip_path)
    stage("clip")
    dataset_folder = work / "dataset"
    preprocess(data.videos, dataset_folder, clip, labels=read_labels(data.labels),
               settings=PreprocessConfig(split_seed=recipe.seed), workers=workers, clip_checkpoint=clip_path,
               progress=progress)
    stage("preprocess")
    train_set = Dataset(dataset_folder, split="train")
    loop = dict(weight_decay=0.0, ema_decay=recipe.ema, grad_clip=1.0, log_every=100, keep=0, seed=recipe.seed,
                bf16=True)  # bfloat16 autocast: twice as fast on this kind of CPU
    unet_task = DiffusionTask(train_set, UNetConfig.preset(recipe.unet_preset),
                              DiffusionTrainingConfig(crop_frames=recipe.crop_frames))
    unet_run = work / "unet"
    train(unet_task, TrainConfig(steps=recipe.unet_steps, batch_size=recipe.unet_batch, lr=recipe.unet_lr,
                                 save_every=max(1, recipe.unet_steps // 4), **loop),
          unet_run, resume=(unet_run / CHECKPOINT_NAME).is_file(), progress=progress)
    stage("unet")
    prior_task = PriorTask(train_set, PriorConfig.preset("tiny"))
    prior_run = work / "prior"
    train(prior_task, TrainConfig(steps=recipe.prior_steps, batch_size=recipe.prior_batch, lr=recipe.prior_lr,
                                  save_every=max(1, recipe.prior_steps // 2), **{**loop, "weight_decay": 0.06}),
          prior_run, resume=(prior_run / CHECKPOINT_NAME).is_file(), progress=progress)
    stage("prior")

    staging = out.with_name(out.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    make_bundle(staging, clip_path, unet_run / CHECKPOINT_NAME, prior=prior_run / CHECKPOINT_NAME,
                vocabulary=demo_vocabulary())
    gate = quality_gate(load_for_gate(staging, recipe), recipe, progress=progress)
    stage("quality gate")
    summary = {"format": "clipsonic.demo", "version": 1, "recipe": recipe.to_dict(), "vocoder": "griffin-lim",
               "quality_gate": gate, "seconds": timings, "total_seconds": round(sum(timings.values()), 1),
               "threads": torch.get_num_threads()}
    write_json_atomic(staging / "demo.json", summary)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    if out.resolve() == shipped_bundle().resolve():
        from clipsonic.manifest import record_shipped

        for role, path in open_bundle(out).files.items():
            record_shipped(f"demo-{role}", path)
    return summary


# ---------------------------------------------------------------- quality gate


def load_for_gate(folder: str | os.PathLike, recipe: DemoRecipe, device: str = "cpu"):
    """The bundle as the quality gate runs it (the recipe's precision)."""
    from clipsonic.pipeline import Pipeline
    from clipsonic.runtime import resolve_dtype

    return Pipeline.load(folder, device=device, dtype=resolve_dtype(recipe.gate_dtype))


def mel_features(log_mel: np.ndarray) -> np.ndarray:
    """[n_mels, frames] -> [n_mels]: the clip's mean log-mel spectrum with its overall level removed.

    The synthetic classes differ in timbre, while loudness is drawn at random within every class,
    so the classifier looks at the spectral shape only. (Adding each band's spread over time made
    it worse on generated audio: sampling noise inflates the spread and pulls samples towards the
    percussive classes.)"""
    spectrum = log_mel.mean(axis=1)
    return spectrum - spectrum.mean()


@dataclasses.dataclass(frozen=True)
class NearestCentroid:
    """Euclidean distance in the (level-removed) log-mel spectrum, in its own units: dividing each
    band by its spread over the real clips, tried first, let the quiet bands whose level hardly
    varies between real clips (noise floors) outweigh the bands that tell the classes apart, and
    recognised fewer real clips (157-159 of 160 against 160)."""

    classes: tuple[str, ...]
    centroids: np.ndarray  # [C, F]

    @classmethod
    def fit(cls, features: np.ndarray, labels: list[str]) -> "NearestCentroid":
        classes = tuple(dict.fromkeys(labels))
        return cls(classes, np.stack([features[[label == c for label in labels]].mean(axis=0) for c in classes]))

    def predict(self, features: np.ndarray) -> list[str]:
        distances = ((features[:, None, :] - self.centroids[None]) ** 2).sum(axis=-1)
        return [self.classes[i] for i in distances.argmin(axis=1)]


def clip_features(wavs, mel_config) -> np.ndarray:
    """[N] waveforms (arrays or tensors [T]) -> [N, n_mels] `mel_features` of their log-mels."""
    from clipsonic.audio import mel_spectrogram

    return np.stack([mel_features(mel_spectrogram(torch.as_tensor(wav, dtype=torch.float32), mel_config).numpy())
                     for wav in wavs])


def held_out_classifier(recipe: DemoRecipe, mel_config) -> NearestCentroid:
    """Nearest-centroid classifier on real clips outside the data set (`reference_clips`)."""
    from clipsonic.synthetic import clip_audio, reference_clips

    specs = reference_clips(recipe.gate_reference_clips, recipe.seed)
    features = clip_features([clip_audio(spec, mel_config.sample_rate) for spec in specs], mel_config)
    return NearestCentroid.fit(features, [spec.label for spec in specs])


def _tally(predicted: list[str], labels: list[str], per_class: int) -> dict:
    from clipsonic.synthetic import CLASSES

    correct = {label: sum(p == t == label for p, t in zip(predicted, labels)) for label in CLASSES}
    return {"correct": correct, "samples_per_class": per_class,
            "accuracy": sum(correct.values()) / (per_class * len(CLASSES)),
            "worst_class": min(correct.values()) / per_class}


def quality_gate(pipeline, recipe: DemoRecipe = DemoRecipe(), variants=GATE_VARIANTS, progress: bool = False) -> dict:
    """Per variant and class, how many of `gate_samples` generated clips the held-out classifier
    assigns to the class; ``passed`` is the gate (SD and IQ at least 80 % in every class)."""
    from clipsonic.synthetic import CLASSES, class_picture, clip_audio, plan_clips
    from clipsonic.variants import IMAGE, VARIANTS, query_embeddings

    mel_config = pipeline.spectrogram.mel_config
    classifier = held_out_classifier(recipe, mel_config)
    count = recipe.gate_samples
    dataset = plan_clips(recipe.clips_per_class, recipe.seed)
    real = clip_features([clip_audio(spec, mel_config.sample_rate) for spec in dataset], mel_config)
    results: dict[str, dict] = {REAL: _tally(classifier.predict(real), [spec.label for spec in dataset],
                                             recipe.clips_per_class)}
    bar = _bar(len(variants) * len(CLASSES), "quality gate", progress)
    for variant in variants:
        predicted, labels = [], []
        for class_index, label in enumerate(CLASSES):
            seed = recipe.seed + 1000 * class_index
            # One picture for IQ; for the text variants one query per sample (a prior draws each anew).
            queries = {"images": [class_picture(label, seed=recipe.seed)]} if VARIANTS[variant].query == IMAGE else \
                {"texts": [CAPTION_TEMPLATES[0].format(label=label)] * count}
            query = query_embeddings(variant, pipeline.clip, prior=pipeline.prior, seed=seed, batch=count,
                                     prior_steps=pipeline.prior_steps, prior_candidates=pipeline.prior_candidates,
                                     **queries)
            mel = pipeline.generate_mel(query, recipe.gate_guidance, "dpm++", recipe.gate_steps, recipe.gate_seconds,
                                        seed, batch=count)
            wavs = pipeline.vocode(mel, recipe.gate_seconds, seed=seed)
            predicted += classifier.predict(clip_features(wavs, mel_config))
            labels += [label] * count
            if bar:
                bar.update(1)
        results[variant] = _tally(predicted, labels, count)
    if bar:
        bar.close()
    gated = [v for v in ("sd", "iq") if v in results]
    results["passed"] = bool(gated) and all(results[v]["worst_class"] >= GATE_THRESHOLD for v in gated)
    return results


def gate_table(gate: dict) -> str:
    """The quality gate as a Markdown table: a row per class, a column per variant and one for the
    data set's real clips (correct of N)."""
    from clipsonic.synthetic import CLASSES

    columns = [v for v in (*GATE_VARIANTS, REAL) if v in gate]
    lines = ["| class | " + " | ".join(v.upper() if v != REAL else "real clips" for v in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for label in CLASSES:
        lines.append(f"| {label} | " + " | ".join(f"{gate[v]['correct'][label]}/{gate[v]['samples_per_class']}"
                                                  for v in columns) + " |")
    lines.append("| **all** | " + " | ".join(f"**{gate[v]['accuracy']:.0%}**" for v in columns) + " |")
    return "\n".join(lines)


def record_gate(folder: str | os.PathLike, gate: dict) -> None:
    """Store a fresh quality-gate measurement in the bundle's demo.json (the older one is replaced)."""
    summary = read_summary(folder)
    summary["quality_gate"] = gate
    summary["quality_gate_measured"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_json_atomic(Path(folder) / "demo.json", summary)


def read_summary(folder: str | os.PathLike | None = None) -> dict:
    path = Path(folder) if folder is not None else shipped_bundle()
    try:
        return json.loads((path / "demo.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClipsonicError(f"{path}: no demo bundle here (run 'clipsonic demo --retrain')") from None
