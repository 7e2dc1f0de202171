"""The demo bundle's quality gate: does it generate what it learned?

`quality_gate`: for each class, samples from the text "a photo of [class]" (SD and ZS) and from a
picture of the class no training clip showed (IQ) are assigned to the nearest class centroid of
real clips no model saw (`reference_clips`: 32 per class, made for the gate); the gate asks for
80 % per class for SD and IQ. Features: the mean log-mel spectrum, level removed
(`mel_features`), of the re-analysed waveform, so the vocoder is part of what is measured. The
same classifier on the data set's own real clips ("real") is the ceiling the generated clips are
held to.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import torch


from clipsonic.demo.recipe import CAPTION_TEMPLATES, DemoRecipe, progress_bar

log = logging.getLogger(__name__)
GATE_VARIANTS = ("sd", "iq", "zs")
REAL = "real"  # the classifier on the data set's real clips
GATE_THRESHOLD = 0.8  # per class, for SD and IQ


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
    from clipsonic.demo.synthetic import clip_audio, reference_clips

    specs = reference_clips(recipe.gate_reference_clips, recipe.seed)
    features = clip_features([clip_audio(spec, mel_config.sample_rate) for spec in specs], mel_config)
    return NearestCentroid.fit(features, [spec.label for spec in specs])


def _tally(predicted: list[str], labels: list[str], per_class: int) -> dict:
    from clipsonic.demo.synthetic import CLASSES

    correct = {label: sum(p == t == label for p, t in zip(predicted, labels)) for label in CLASSES}
    return {"correct": correct, "samples_per_class": per_class,
            "accuracy": sum(correct.values()) / (per_class * len(CLASSES)),
            "worst_class": min(correct.values()) / per_class}


def quality_gate(pipeline, recipe: DemoRecipe = DemoRecipe(), variants=GATE_VARIANTS, progress: bool = False) -> dict:
    """Per variant and class, how many of `gate_samples` generated clips the held-out classifier
    assigns to the class; ``passed`` is the gate (SD and IQ at least 80 % in every class)."""
    from clipsonic.demo.synthetic import CLASSES, class_picture, clip_audio, plan_clips
    from clipsonic.variants import IMAGE, VARIANTS, query_embeddings

    mel_config = pipeline.spectrogram.mel_config
    classifier = held_out_classifier(recipe, mel_config)
    count = recipe.gate_samples
    dataset = plan_clips(recipe.clips_per_class, recipe.seed)
    real = clip_features([clip_audio(spec, mel_config.sample_rate) for spec in dataset], mel_config)
    results: dict[str, dict] = {REAL: _tally(classifier.predict(real), [spec.label for spec in dataset],
                                             recipe.clips_per_class)}
    bar = progress_bar(len(variants) * len(CLASSES), "quality gate", progress)
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
    from clipsonic.demo.synthetic import CLASSES

    columns = [v for v in (*GATE_VARIANTS, REAL) if v in gate]
    lines = ["| class | " + " | ".join(v.upper() if v != REAL else "real clips" for v in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for label in CLASSES:
        lines.append(f"| {label} | " + " | ".join(f"{gate[v]['correct'][label]}/{gate[v]['samples_per_class']}"
                                                  for v in columns) + " |")
    lines.append("| **all** | " + " | ".join(f"**{gate[v]['accuracy']:.0%}**" for v in columns) + " |")
    return "\n".join(lines)


