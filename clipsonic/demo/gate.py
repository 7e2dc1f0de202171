"""The demo bundle's quality gate: does it generate what it learned, at the level it learned?

`quality_gate`: for each class, samples from the text "a photo of [class]" (SD and ZS) and from a
picture of the class no training clip showed (IQ), generated at the bundle's recommended guidance,
are judged against real clips no model saw (`reference_clips`: 32 per class, made for the gate).
The verdict (``passed``), for SD and IQ, every class:

- recognised: at least 13 of 16 samples assigned to their class by the nearest class centroid of
  those real clips (`mel_features`: the mean log-mel spectrum, level removed, of the re-analysed
  waveform, so the vocoder is part of what is measured);
- at the real level: the samples' median RMS level within 3 dB of the real clips' median, their
  spread (interquartile range) at most twice the real one, and no sample over full scale
  (the model's own output, before any peak guard).

ZS is reported, not gated. The same classifier on the data set's own real clips ("real") is the
ceiling the generated clips are held to. With the bundle's VGGish, the demo FAD of each variant
(`fad_line`), which hears texture and rhythm, is measured beside it.
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
GATE_THRESHOLD = 13 / 16  # per class, for SD and IQ: recognised samples
LEVEL_TOLERANCE_DB = 3.0  # per class: |median generated level - median real level|
SPREAD_RATIO = 2.0  # per class: interquartile range of generated levels <= this x the real one
FULL_SCALE = 1.0


def load_for_gate(folder: str | os.PathLike, recipe: DemoRecipe, device: str = "cpu"):
    """The bundle as the quality gate runs it (the recipe's precision)."""
    from clipsonic.pipeline import Pipeline
    from clipsonic.runtime import resolve_dtype

    return Pipeline.load(folder, device=device, dtype=resolve_dtype(recipe.gate_dtype))


def gate_vggish(folder: str | os.PathLike, device: str = "cpu"):
    """The bundle's own VGGish (the demo FAD's embedding), or None for a bundle without one."""
    from clipsonic.bundle import open_bundle
    from clipsonic.vggish import load_vggish

    path = open_bundle(folder).path("vggish")
    return None if path is None else load_vggish(path, device=device)


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


def held_out_clips(recipe: DemoRecipe, sample_rate: int) -> tuple[list[str], list[np.ndarray]]:
    """The labels and sound tracks of the real clips outside the data set (`reference_clips`)
    that the gate fits its classifier on and takes the real levels from."""
    from clipsonic.demo.synthetic import clip_audio, reference_clips

    specs = reference_clips(recipe.gate_reference_clips, recipe.seed)
    return [spec.label for spec in specs], [clip_audio(spec, sample_rate) for spec in specs]


def rms_db(wav) -> float:
    """A waveform's RMS level in dB relative to full scale (a full-scale sine is -3 dB)."""
    wav = np.asarray(wav, dtype=np.float64)
    return float(10 * np.log10(np.mean(wav * wav) + 1e-20))


def level_statistics(levels) -> dict:
    """Median and interquartile range (dB) of a class's levels."""
    low, median, high = np.percentile(np.asarray(levels, dtype=np.float64), [25, 50, 75])
    return {"median_db": round(float(median), 2), "iqr_db": round(float(high - low), 2)}


def level_check(generated: dict, real: dict) -> dict:
    """Per class: the generated median level within LEVEL_TOLERANCE_DB of the real one and the
    generated spread at most SPREAD_RATIO x the real spread."""
    out = {}
    for label, stats in generated.items():
        offset = stats["median_db"] - real[label]["median_db"]
        out[label] = {**stats, "offset_db": round(offset, 2),
                      "passed": bool(abs(offset) <= LEVEL_TOLERANCE_DB
                                     and stats["iqr_db"] <= SPREAD_RATIO * real[label]["iqr_db"])}
    return out


def _tally(predicted: list[str], labels: list[str], per_class: int) -> dict:
    from clipsonic.demo.synthetic import CLASSES

    correct = {label: sum(p == t == label for p, t in zip(predicted, labels)) for label in CLASSES}
    return {"correct": correct, "samples_per_class": per_class,
            "accuracy": sum(correct.values()) / (per_class * len(CLASSES)),
            "worst_class": min(correct.values()) / per_class}


def quality_gate(pipeline, recipe: DemoRecipe = DemoRecipe(), variants=GATE_VARIANTS, progress: bool = False,
                 vggish=None) -> dict:
    """Per variant and class: how many of `gate_samples` generated clips the held-out classifier
    assigns to the class, their level (median and spread, dB) against the held-out real clips'
    and how many would exceed full scale. ``recognition_passed``: for SD and IQ, at least
    GATE_THRESHOLD of each class recognised; ``level_passed``: for SD and IQ, each class's level
    within LEVEL_TOLERANCE_DB, its spread at most SPREAD_RATIO x the real one, and no sample over
    full scale; ``passed``: both. With `vggish` (`gate_vggish`), each variant's ``fad``: the demo FAD of all its
    samples against the held-out real clips, beside that of the data set's own clips ("real", the
    floor) and of their Griffin-Lim reconstructions (``reconstruction``: the vocoder's share)."""
    from clipsonic.audio import griffin_lim, mel_spectrogram
    from clipsonic.demo.synthetic import CLASSES, class_picture, clip_audio, plan_clips
    from clipsonic.metrics import embedding_statistics, frechet_distance_from_statistics
    from clipsonic.variants import IMAGE, VARIANTS, query_embeddings

    mel_config = pipeline.spectrogram.mel_config
    reference_labels, reference_audio = held_out_clips(recipe, mel_config.sample_rate)
    classifier = NearestCentroid.fit(clip_features(reference_audio, mel_config), reference_labels)
    count = recipe.gate_samples
    dataset = plan_clips(recipe.clips_per_class, recipe.seed)
    dataset_audio = [clip_audio(spec, mel_config.sample_rate) for spec in dataset]
    real = clip_features(dataset_audio, mel_config)
    results: dict[str, dict] = {REAL: _tally(classifier.predict(real), [spec.label for spec in dataset],
                                             recipe.clips_per_class)}
    reference = None if vggish is None else \
        embedding_statistics(vggish.fad_embeddings(reference_audio, mel_config.sample_rate))

    def fad(wavs) -> float:
        return frechet_distance_from_statistics(
            *embedding_statistics(vggish.fad_embeddings(wavs, mel_config.sample_rate)), *reference)

    if reference is not None:
        results[REAL]["fad"] = fad(dataset_audio)
        seconds = round(recipe.gate_seconds * mel_config.sample_rate)
        rebuilt = [griffin_lim(mel_spectrogram(torch.from_numpy(wav[:seconds]), mel_config), mel_config).numpy()
                   for wav in dataset_audio]
        results["reconstruction"] = {"fad": fad(rebuilt)}
    real_levels = {label: level_statistics([rms_db(wav) for clip_label, wav in zip(reference_labels, reference_audio)
                                            if clip_label == label]) for label in CLASSES}
    results[REAL]["levels"] = real_levels
    bar = progress_bar(len(variants) * len(CLASSES), "quality gate", progress)
    for variant in variants:
        predicted, labels, levels, over, generated = [], [], {}, {}, []
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
            wavs = pipeline.vocode(mel, recipe.gate_seconds, seed=seed).float().cpu().numpy()
            predicted += classifier.predict(clip_features(wavs, mel_config))
            labels += [label] * count
            levels[label] = level_statistics([rms_db(wav) for wav in wavs])
            over[label] = int((np.abs(wavs).max(axis=1) > FULL_SCALE).sum())
            generated += list(wavs)
            if bar:
                bar.update(1)
        results[variant] = {**_tally(predicted, labels, count), "levels": level_check(levels, real_levels),
                            "over_full_scale": over}
        if reference is not None:
            results[variant]["fad"] = fad(generated)
    if bar:
        bar.close()
    gated = [v for v in ("sd", "iq") if v in results]
    results["recognition_passed"] = bool(gated) and all(results[v]["worst_class"] >= GATE_THRESHOLD for v in gated)
    results["level_passed"] = bool(gated) and all(level_passed(results[v]) for v in gated)
    results["passed"] = results["recognition_passed"] and results["level_passed"]
    return results


def level_passed(result: dict) -> bool:
    """One variant's level verdict: every class at the real level and spread, nothing over full scale."""
    return all(c["passed"] for c in result["levels"].values()) and not any(result["over_full_scale"].values())


def fad_line(gate: dict) -> str | None:
    """The demo FADs in one line, or None when the gate measured none (a bundle without a VGGish)."""
    if "fad" not in gate[REAL]:
        return None
    variants = ", ".join(f"{v.upper()} {gate[v]['fad']:.4g}" for v in GATE_VARIANTS if v in gate and "fad" in gate[v])
    return (f"demo FAD against the held-out real clips (lower is better): {variants}; Griffin-Lim "
            f"reconstruction {gate['reconstruction']['fad']:.4g}; the data set's real clips {gate[REAL]['fad']:.4g}")


def gate_table(gate: dict) -> str:
    """The quality gate as a Markdown table: a row per class; per variant the correct of N, the
    median level's offset from the real clips' (dB), the level spread (IQR, dB) and the samples
    over full scale; the real clips' recognition, median level and spread."""
    from clipsonic.demo.synthetic import CLASSES

    variants = [v for v in GATE_VARIANTS if v in gate]
    real = gate[REAL]
    head = ["class"] + [f"{v.upper()} {what}" for v in variants for what in ("correct", "level", "IQR", "clipped")]
    head += ["real correct", "real level", "real IQR"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for label in CLASSES:
        cells = [label]
        for v in variants:
            result, level = gate[v], gate[v]["levels"][label]
            mark = "" if level["passed"] else " ✗"
            cells += [f"{result['correct'][label]}/{result['samples_per_class']}", f"{level['offset_db']:+.1f} dB{mark}",
                      f"{level['iqr_db']:.1f}", str(result["over_full_scale"][label])]
        level = real["levels"][label]
        cells += [f"{real['correct'][label]}/{real['samples_per_class']}", f"{level['median_db']:.1f} dB",
                  f"{level['iqr_db']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    total = ["**all**"] + [cell for v in variants
                           for cell in (f"**{gate[v]['accuracy']:.0%}**", "", "", str(sum(gate[v]['over_full_scale'].values())))]
    lines.append("| " + " | ".join(total + [f"**{real['accuracy']:.0%}**", "", ""]) + " |")
    return "\n".join(lines)
