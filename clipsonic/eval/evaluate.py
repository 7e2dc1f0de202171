"""`clipsonic eval`: the paper's objective evaluation (§3.3, Tables 1 and 2, Figure 3).

K samples per model (512 in the paper), one per query drawn from the test split's labelled
clips: the text "a photo of [label]" for the text variants (ZS, PD, SD, CLIP-TTA), the clip's
middle frame's CLIP embedding for IQ. Each sample is embedded with VGGish and the Fréchet
audio distance taken against the VGGish embeddings of the test clips' real soundtracks
(cached as statistics in the output folder). The mel-reconstruction row vocodes the real
test mels, the floor the vocoder puts under every model. Table 2 is the mean cosine
similarity between the query embedding (the text's for ZS, the prior's draw for PD/SD) and
the clip's real image embedding.

With a LAION-CLAP model (`clipsonic.clap`), each sample also gets its CLAP score against the text
"the sound of [label]" (the paper's prompt; Table 1's last column, the mean over the K samples),
and Table 5 scores the test clips' real audio and their reconstructions over 4-s windows every
0.5 s (max, mean and min per clip, averaged over clips) and as whole clips. Without one the
column says n/a.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from clipsonic.config import Config
from clipsonic.data import ClipRecord, Dataset
from clipsonic.errors import ClipsonicError, ParameterError
from clipsonic.fileio import atomic_path, write_json_atomic, write_text_atomic
from clipsonic.pipeline import check_finite
from clipsonic.variants import CLAP_TEMPLATE, IMAGE, TEXT, VARIANTS, available, get_variant, label_texts, query_embeddings

log = logging.getLogger(__name__)

RECONSTRUCTION = "reconstruction"  # Table 1's floor row: the real test mels through the vocoder
WINDOW_SECONDS, WINDOW_HOP_SECONDS = 4.0, 0.5  # Table 5's sliding windows


@dataclasses.dataclass(frozen=True)
class EvalConfig(Config):
    samples: int = 512
    guidance: tuple[float, ...] = (1.5,)  # several: a guidance sweep (paper Figure 3)
    sampler: str = "dpm++"
    steps: int = 25
    seconds: float = 4.0
    batch: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 2:
            raise ParameterError("{option}: must be at least 2 (a covariance needs two embeddings)", "samples", self.samples)
        if not self.guidance or any(w < 0 for w in self.guidance):
            raise ClipsonicError("guidance weights must be non-negative")
        if self.steps < 1 or self.batch < 1 or self.seconds < 1:
            raise ClipsonicError(f"steps ({self.steps}) and batch ({self.batch}) must be at least 1 and seconds "
                                 f"({self.seconds:g}) at least 1 (VGGish reads 0.96-s windows)")


@dataclasses.dataclass(frozen=True)
class Query:
    record: ClipRecord
    frame: int  # which of the clip's embedded frames IQ uses (the middle one)

    @property
    def label(self) -> str | None:
        return self.record.label


@dataclasses.dataclass(frozen=True)
class Score:
    variant: str
    guidance: float | None
    fad: float
    samples: int
    clap: float | None = None  # mean CLAP score of the samples, when a CLAP model was given


def plan_queries(dataset: Dataset, samples: int, seed: int) -> list[Query]:
    """`samples` queries over the labelled test clips: every clip once per round, in a seeded order."""
    records = [record for record in dataset.records if record.label is not None]
    if not records:
        raise ClipsonicError(f"{dataset.folder}: no labelled test clips to evaluate on (preprocess it with a labels file)")
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < samples:
        order.extend(rng.permutation(len(records)).tolist())
    return [Query(records[index], records[index].frame_count // 2) for index in order[:samples]]


def real_audio(dataset: Dataset, record: ClipRecord, sample_rate: int) -> np.ndarray:
    """The clip's soundtrack, mono at `sample_rate`, from its source file."""
    from clipsonic.media import decode_audio

    path = dataset.source_path(record)
    if path is None:
        raise ClipsonicError(f"{dataset.folder}: the dataset does not record where its videos are, so the real "
                             f"audio cannot be read")
    if not path.is_file():
        raise ClipsonicError(f"{path}: the source video of test clip {record.id} is gone")
    return decode_audio(path, sample_rate)


class Evaluator:
    """Generates, embeds and scores; one instance per evaluation run."""

    def __init__(self, pipeline, dataset: Dataset, vggish, config: EvalConfig, tta=None,
                 progress: Callable[[int], None] | None = None, clap=None) -> None:
        self.pipeline, self.dataset, self.vggish, self.config = pipeline, dataset, vggish, config
        self.tta, self.progress, self.clap = tta, progress, clap
        self.queries = plan_queries(dataset, config.samples, config.seed)
        self._conditions: dict[str, torch.Tensor] = {}

    def available_variants(self) -> list[str]:
        """The variants the loaded models can generate (tta, clap-tta: with a CLIP-TTA or CLAP-TTA UNet
        given; clap-tta also with the CLAP model)."""
        names = available(self.pipeline.spectrogram.condition, self.pipeline.prior, clap=self.clap)
        if self.tta is not None:
            names += [name for name in available(self.tta.condition, clap=self.clap) if name not in names]
        return names

    # ------------------------------------------------------------ query embeddings

    def image_embeddings(self) -> torch.Tensor:
        """[K, D]: each query clip's real CLIP image embedding (IQ's condition, Table 2's target)."""
        return torch.from_numpy(np.stack([self.dataset.image_embeddings(q.record)[q.frame] for q in self.queries]))

    def _texts(self, variant: str) -> list[str]:
        return label_texts(variant, [q.label for q in self.queries], self.dataset.text_template)

    def condition(self, variant: str) -> torch.Tensor:
        """The K conditioning embeddings [K, D] of a variant (drawn once, reused across guidance weights)."""
        if variant not in self._conditions:
            chosen = get_variant(variant)
            queries = {"image_embeddings": self.image_embeddings()} if chosen.query == IMAGE else {"texts": self._texts(variant)}
            self._conditions[variant] = query_embeddings(
                chosen, self.pipeline.clip, prior=self.pipeline.prior, seed=self.config.seed, batch=self.config.batch,
                prior_steps=self.pipeline.prior_steps, prior_candidates=self.pipeline.prior_candidates,
                clap=self.clap, **queries).cpu()
        return self._conditions[variant]

    def cosine_similarities(self, variants: Sequence[str]) -> dict[str, float]:
        """Paper Table 2: mean cos(query, the clip's real image embedding) for ZS, PD and SD."""
        target = self.image_embeddings()
        return {variant: float(torch.nn.functional.cosine_similarity(self.condition(variant), target).mean())
                for variant in variants if VARIANTS[variant].query == TEXT and VARIANTS[variant].trained_on == IMAGE}

    # ------------------------------------------------------------ audio and FAD

    def embed_audio(self, wavs: Sequence[np.ndarray | torch.Tensor]) -> np.ndarray:
        """VGGish embeddings of 16-kHz waveforms, all examples of all clips stacked [N, 128]."""
        return self.vggish.fad_embeddings(wavs)

    def clap_scores(self, wavs: Sequence[np.ndarray | torch.Tensor], labels: Sequence[str | None]) -> list[float]:
        """Each 16-kHz waveform's CLAP score against "the sound of [its label]" (equal lengths)."""
        from clipsonic.clap import clap_score

        audio = self.clap.embed_audio(torch.stack([torch.as_tensor(np.asarray(w, dtype=np.float32)) for w in wavs]))
        texts = self.clap.embed_text([CLAP_TEMPLATE.format(label=label or "") for label in labels])
        return clap_score(audio, texts).tolist()

    def generated_embeddings(self, variant: str, guidance: float,
                             save_to: Path | None = None) -> tuple[np.ndarray, list[float] | None]:
        """VGGish embeddings of the K samples of a variant at one guidance weight, and their CLAP
        scores (None without a CLAP model)."""
        condition = self.condition(variant)
        trained_on = VARIANTS[variant].trained_on
        pipeline = self.pipeline if self.pipeline.spectrogram.condition == trained_on else \
            dataclasses.replace(self.pipeline, spectrogram=self.tta)
        config, rows, claps = self.config, [], []
        for start in range(0, len(condition), config.batch):
            chunk = condition[start:start + config.batch]
            mel = pipeline.generate_mel(chunk.to(pipeline.device), guidance, config.sampler, config.steps,
                                        config.seconds, config.seed + start, batch=len(chunk))
            check_finite(mel, f"{variant} spectrogram")
            wavs = pipeline.vocode(mel, config.seconds, seed=config.seed + start)
            check_finite(wavs, f"{variant} waveform")
            if save_to is not None:
                self._save(save_to, start, wavs)
            rows.append(self.embed_audio(list(wavs)))
            if self.clap is not None:
                claps += self.clap_scores(wavs, [q.label for q in self.queries[start:start + len(chunk)]])
            if self.progress:
                self.progress(len(chunk))
        return np.concatenate(rows), claps if self.clap is not None else None

    def reconstruction_embeddings(self) -> tuple[np.ndarray, list[float] | None]:
        """VGGish embeddings of the test clips' real mels (the first `seconds`) put through the
        vocoder, and their CLAP scores (None without a CLAP model)."""
        mel_config = self.pipeline.spectrogram.mel_config
        frames = round(self.config.seconds * mel_config.sample_rate / mel_config.hop_size)
        records = distinct_records(self.queries)
        rows, claps = [], []
        for start in range(0, len(records), self.config.batch):
            chunk = records[start:start + self.config.batch]
            mels = torch.from_numpy(np.stack([self._padded_mel(r, frames) for r in chunk]))
            wavs = self.pipeline.vocode(mels, self.config.seconds, seed=self.config.seed)
            rows.append(self.embed_audio(list(wavs)))
            if self.clap is not None:
                claps += self.clap_scores(wavs, [r.label for r in chunk])
        return np.concatenate(rows), claps if self.clap is not None else None

    def windowed_clap(self) -> dict[str, dict[str, float]]:
        """Paper Table 5: per test clip, the CLAP scores of its 4-s windows every 0.5 s (max, mean,
        min) and of the whole clip, averaged over the clips; for the real audio ("ground truth")
        and for its whole mel put through the vocoder ("reconstruction")."""
        sample_rate = self.pipeline.spectrogram.mel_config.sample_rate
        window, hop = round(WINDOW_SECONDS * sample_rate), round(WINDOW_HOP_SECONDS * sample_rate)
        rows: dict[str, list[list[float]]] = {"ground truth": [], RECONSTRUCTION: []}
        for record in distinct_records(self.queries):
            real = real_audio(self.dataset, record, sample_rate)
            mel = torch.from_numpy(self.dataset.mel(record))[None]
            rebuilt = self.pipeline.vocode(mel, seed=self.config.seed)[0].float().cpu().numpy()
            for name, wav in (("ground truth", real), (RECONSTRUCTION, rebuilt)):
                starts = range(0, max(len(wav) - window, 0) + 1, hop)
                windows = [np.pad(wav[i:i + window], (0, max(0, window - len(wav)))) for i in starts]
                scores = []
                for first in range(0, len(windows), self.config.batch):
                    part = windows[first:first + self.config.batch]
                    scores += self.clap_scores(part, [record.label] * len(part))
                whole = self.clap_scores([wav], [record.label])[0]
                rows[name].append([max(scores), float(np.mean(scores)), min(scores), whole])
        return {name: dict(zip(("max", "mean", "min", "whole"), np.mean(values, axis=0).tolist()))
                for name, values in rows.items()}

    def _padded_mel(self, record: ClipRecord, frames: int) -> np.ndarray:
        mel = self.dataset.mel(record, 0, min(frames, record.mel_frames))
        if mel.shape[1] < frames:  # a short clip: pad with the log floor (silence)
            mel = np.pad(mel, ((0, 0), (0, frames - mel.shape[1])), constant_values=float(mel.min()))
        return mel

    def reference_statistics(self, cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the VGGish embeddings of the test clips' real audio, cached in `cache`."""
        from clipsonic.metrics import embedding_statistics, load_statistics, save_statistics

        records = distinct_records(self.queries)
        key = hashlib.sha256("\n".join([str(self.dataset.folder.resolve())] + [r.id for r in records]
                                       + [self.vggish_fingerprint()]).encode()).hexdigest()
        if cache is not None and cache.is_file():
            with np.load(cache) as archive:
                if "key" in archive.files and str(archive["key"]) == key:
                    return load_statistics(cache)
        sample_rate = 16000
        embeddings = self.embed_audio([real_audio(self.dataset, r, sample_rate) for r in records])
        mu, sigma = embedding_statistics(embeddings)
        if cache is not None:
            save_statistics(cache, mu, sigma, key=key)
        return mu, sigma

    def vggish_fingerprint(self) -> str:
        """Which VGGish weights made the cached statistics: each tensor's name and first 4 KiB
        (enough to tell weight files apart without hashing 288 MB on every run)."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.vggish.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])
        return digest.hexdigest()

    def _save(self, folder: Path, start: int, wavs: torch.Tensor) -> None:
        """Write the samples as files a person can play (`playable`: a sample that would clip is
        scaled to peak at -1 dBFS); FAD is computed on the unscaled samples."""
        from clipsonic.audio import PEAK_CEILING_DBFS, playable, save_audio

        folder.mkdir(parents=True, exist_ok=True)
        sample_rate = self.pipeline.spectrogram.mel_config.sample_rate
        scaled = 0
        for offset, wav in enumerate(wavs):
            query = self.queries[start + offset]
            name = f"{start + offset:04d}_{(query.label or 'unlabelled').replace(' ', '_').replace('/', '_')}.wav"
            wav, change = playable(wav, sample_rate)
            scaled += change.peak_gain_db < 0
            save_audio(folder / name, wav, sample_rate)
        if scaled:
            log.info("%s: %d of %d saved samples would clip and were scaled to peak at %g dBFS (FAD is measured "
                     "on the unscaled samples)", folder, scaled, len(wavs), PEAK_CEILING_DBFS)


def distinct_records(queries: Sequence[Query]) -> list[ClipRecord]:
    seen: dict[str, ClipRecord] = {}
    for query in queries:
        seen.setdefault(query.record.id, query.record)
    return list(seen.values())


def evaluate(evaluator: Evaluator, variants: Sequence[str], out: Path, save_audio: bool = False,
             reconstruction: bool = True) -> dict:
    """Score every variant at every guidance weight; write the tables and summary.json to `out`."""
    from clipsonic.metrics import embedding_statistics, frechet_distance_from_statistics

    out.mkdir(parents=True, exist_ok=True)
    config = evaluator.config
    reference = evaluator.reference_statistics(out / "reference_statistics.npz")
    scores: list[Score] = []
    for variant in variants:
        for guidance in config.guidance:
            folder = out / "samples" / f"{variant}_w{guidance:g}" if save_audio else None
            embeddings, claps = evaluator.generated_embeddings(variant, guidance, folder)
            fad = frechet_distance_from_statistics(*embedding_statistics(embeddings), *reference)
            scores.append(Score(variant, guidance, fad, len(embeddings), _mean(claps)))
            log.info("%s at w=%g: FAD %.4g%s", variant, guidance, fad,
                     "" if claps is None else f", CLAP score {_mean(claps):.3f}")
    if reconstruction:
        embeddings, claps = evaluator.reconstruction_embeddings()
        scores.append(Score(RECONSTRUCTION, None, frechet_distance_from_statistics(
            *embedding_statistics(embeddings), *reference), len(embeddings), _mean(claps)))
    cosine = evaluator.cosine_similarities(variants)
    vocoder = "BigVGAN" if evaluator.pipeline.vocoder is not None else "Griffin-Lim"
    summary = {"format": "clipsonic.eval", "version": 1, "dataset": str(evaluator.dataset.folder),
               "config": config.to_dict(), "vocoder": vocoder, "test_clips": len(distinct_records(evaluator.queries)),
               "fad": [dataclasses.asdict(score) for score in scores], "cosine_similarity": cosine,
               "clap_score": None, "vggish": evaluator.vggish.origin}
    if evaluator.clap is not None:
        summary["clap_score"] = {"template": CLAP_TEMPLATE, "windows": evaluator.windowed_clap()}
        write_text_atomic(out / "table5.md", table5(summary["clap_score"]["windows"], vocoder) + "\n")
    table_weight = min(config.guidance, key=lambda w: abs(w - evaluator.pipeline.guidance))
    write_text_atomic(out / "table1.md", table1(scores, table_weight, vocoder, summary["vggish"]) + "\n")
    write_text_atomic(out / "table2.md", table2(cosine) + "\n")
    if len(config.guidance) > 1:
        write_text_atomic(out / "sweep.md", sweep_table(scores, config.guidance) + "\n")
        plot_sweep(scores, out / "fad_vs_guidance.png")
    write_text_atomic(out / "sweep.csv", sweep_csv(scores))
    write_json_atomic(out / "summary.json", summary)
    return summary


def _mean(values: list[float] | None) -> float | None:
    return None if values is None else float(np.mean(values))


def table1(scores: Sequence[Score], guidance: float, vocoder: str, vggish: str = "torchvggish") -> str:
    """Paper Table 1's layout at one guidance weight (CLAP score n/a when no CLAP model was given)."""
    embedding = "the demo bundle's VGGish: a demo FAD, not comparable with the paper's" if vggish == "demo" else \
        f"{vggish} VGGish"
    lines = [f"Evaluation at w = {guidance:g} ({vocoder} vocoder; FAD with {embedding}).", "",
             "| Model | Without text-audio pairs | Training query | Inference query | FAD ↓ | CLAP score ↑ |",
             "|---|---|---|---|---|---|"]
    for score in scores:
        if score.guidance not in (None, guidance):
            continue
        if score.variant == RECONSTRUCTION:
            name, unpaired, training, inference = f"{vocoder} mel spectrogram reconstruction", "-", "-", "-"
        else:
            variant = VARIANTS[score.variant]
            name, unpaired, training, inference = (variant.paper_name, variant.without_pairs, variant.trained_on,
                                                   variant.query)
        clap = "n/a" if score.clap is None else f"{score.clap:.3f}"
        lines.append(f"| {name} | {unpaired} | {training} | {inference} | {score.fad:.4g} | {clap} |")
    return "\n".join(lines)


def table5(windows: dict[str, dict[str, float]], vocoder: str) -> str:
    """Paper Table 5: CLAP scores of the test clips over 4-s windows every 0.5 s and as whole clips."""
    lines = [f"CLAP scores against \"{CLAP_TEMPLATE}\", averaged over the test clips.", "",
             "| Audio | 4-s windows: max | mean | min | whole clip |", "|---|---|---|---|---|"]
    for name, value in windows.items():
        shown = f"{vocoder} mel spectrogram reconstruction" if name == RECONSTRUCTION else name
        lines.append(f"| {shown} | {value['max']:.3f} | {value['mean']:.3f} | {value['min']:.3f} | "
                     f"{value['whole']:.3f} |")
    return "\n".join(lines)


def table2(cosine: dict[str, float]) -> str:
    """Paper Table 2: cosine similarities between query embeddings."""
    lines = ["| Model | Similarity computed | Value |", "|---|---|---|"]
    for name, value in cosine.items():
        variant = VARIANTS[name]
        computed = "sim(q̂_img, q_img)" if variant.draws_from_prior else "sim(q_text, q_img)"
        lines.append(f"| {variant.short_name} | {computed} | {value:.3f} |")
    return "\n".join(lines)


def sweep_table(scores: Sequence[Score], weights: Sequence[float]) -> str:
    """FAD per model (rows) and guidance weight (columns)."""
    lines = ["| Model | " + " | ".join(f"w = {w:g}" for w in weights) + " |",
             "|---|" + "---|" * len(weights)]
    for variant in dict.fromkeys(s.variant for s in scores if s.guidance is not None):
        by_weight = {s.guidance: s.fad for s in scores if s.variant == variant}
        lines.append(f"| {VARIANTS[variant].paper_name} | " + " | ".join(f"{by_weight[w]:.4g}" for w in weights) + " |")
    return "\n".join(lines)


def sweep_csv(scores: Sequence[Score]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["variant", "guidance", "fad", "samples", "clap_score"])
    for score in scores:
        writer.writerow([score.variant, "" if score.guidance is None else f"{score.guidance:g}",
                         f"{score.fad:.6f}", score.samples, "" if score.clap is None else f"{score.clap:.6f}"])
    return text.getvalue()


def plot_sweep(scores: Sequence[Score], path: Path) -> bool:
    """FAD against guidance as a PNG, when matplotlib is installed (an optional extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    figure, axes = plt.subplots(figsize=(5, 3.5))
    for variant in dict.fromkeys(s.variant for s in scores if s.guidance is not None):
        points = sorted((s.guidance, s.fad) for s in scores if s.variant == variant)
        axes.plot(*zip(*points), marker="o", label=VARIANTS[variant].short_name)
    axes.set_xlabel("classifier-free guidance w")
    axes.set_ylabel("FAD (VGGish)")
    axes.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
    return True


# ------------------------------------------------------------ FAD between folders


def folder_statistics(path: Path, vggish, sample_rate: int = 16000) -> tuple[tuple[np.ndarray, np.ndarray], int]:
    """(mean, covariance) of the VGGish embeddings of every audio/video file below `path`, and the
    file count; or the statistics stored in a .npz file."""
    from clipsonic.audio import load_audio
    from clipsonic.media import AUDIO_SUFFIXES, VIDEO_SUFFIXES, find_files
    from clipsonic.metrics import embedding_statistics, load_statistics

    if path.is_file() and path.suffix == ".npz":
        return load_statistics(path), 0
    if not path.is_dir():
        raise ClipsonicError(f"{path}: not a folder of audio files or a statistics .npz")
    files = find_files(path, AUDIO_SUFFIXES + VIDEO_SUFFIXES)
    if len(files) < 1:
        raise ClipsonicError(f"{path}: no audio files in it")
    rows = [np.asarray(vggish.embed(load_audio(file, sample_rate)), dtype=np.float64) for file in files]
    embeddings = np.concatenate(rows)
    if len(embeddings) < 2:
        raise ClipsonicError(f"{path}: the audio is too short for two VGGish windows (0.96 s each)")
    return embedding_statistics(embeddings), len(files)


def clap_path(given: str | os.PathLike | None) -> Path | None:
    """The LAION-CLAP checkpoint: `given`, else the manifest's file in the user weights folder, else
    None (the CLAP column says n/a, and a log line says why)."""
    from clipsonic import manifest

    if given is not None:
        return Path(given)
    entry = manifest.load_manifest()["clap-630k-audioset-fusion"]
    found = manifest.locate(entry)
    if found is None:
        log.info("no CLAP score: no %s in %s (give one with --clap; source: %s)", entry.file, manifest.user_folder(),
                 entry.source)
    return found


def vggish_path(given: str | os.PathLike | None, bundle: str | os.PathLike | None = None) -> Path:
    """The VGGish weights: `given`, else the bundle's own ``vggish.pt`` (the demo bundle has one:
    said in a log line, since its FAD is not the paper's), else the manifest's file in the user
    weights folder."""
    from clipsonic import manifest
    from clipsonic.bundle import open_bundle

    if given is not None:
        return Path(given)
    own = open_bundle(bundle).path("vggish") if bundle is not None else None
    if own is not None:
        log.info("FAD with the bundle's own VGGish (%s: trained on the demo's synthetic classes, so its FAD is the "
                 "demo FAD, not comparable with the paper's; --vggish for torchvggish's)", own)
        return own
    found = manifest.locate(manifest.load_manifest()["vggish"])
    if found is None:
        raise ParameterError(f"no VGGish weights: give their file ({{option}}), or put vggish-10086976.pth in "
                             f"{manifest.user_folder()} (see 'clipsonic weights list')", "vggish", None)
    return found
