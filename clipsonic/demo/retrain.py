"""Rebuilding the demo bundle from nothing (`retrain`), and its demo.json.

The same steps a user takes on real videos: synthetic videos (`clipsonic.demo.synthetic`) -> a
small CLIP trained contrastively on their pictures and captions -> `preprocess` -> the
spectrogram UNet (`train`) -> the CLIP-TTA baseline (`train --cond clip-text`) -> the SD prior
(`train-prior`), and beside them the demo VGGish (`clipsonic.demo.embedding`) -> a bundle
(`clipsonic.bundle`: clip.pt, unet.pt, tta.pt, prior.pt, vggish.pt, bundle.json listing the
sixteen sounds as its vocabulary and the guidance weight the gate measured) with demo.json
(recipe, timings, gate). Griffin-Lim is its vocoder (see README: a BigVGAN small enough to train
here did not beat it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from clipsonic.bundle import make_bundle, open_bundle, shipped_bundle
from clipsonic.demo.gate import gate_vggish, load_for_gate, quality_gate
from clipsonic.demo.recipe import DemoRecipe, demo_vocabulary, progress_bar, train_demo_clip
from clipsonic.errors import ClipsonicError
from clipsonic.fileio import write_json_atomic

log = logging.getLogger(__name__)


def retrain(work: str | os.PathLike, out: str | os.PathLike | None = None, recipe: DemoRecipe = DemoRecipe(),
            workers: int = 2, progress: bool = False) -> dict:
    """Rebuild the demo bundle in `out` (default: the shipped folder), working in `work` (resumable:
    finished stages are kept). Returns demo.json's content."""
    from clipsonic.clip import load_clip, save_clip
    from clipsonic.data import Dataset
    from clipsonic.data.labels import read_labels
    from clipsonic.data.preprocess import PreprocessConfig, preprocess
    from clipsonic.prior import PriorConfig
    from clipsonic.demo.synthetic import make_demo_data, plan_clips
    from clipsonic.train.unet import DiffusionTask, DiffusionTrainingConfig
    from clipsonic.train.prior import PriorTask
    from clipsonic.train.loop import CHECKPOINT_NAME, TrainConfig, train
    from clipsonic.unet import UNetConfig
    from clipsonic.variants import IMAGE, TEXT

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

    def train_unet(run: Path, condition: str, steps: int) -> Path:
        task = DiffusionTask(train_set, UNetConfig.preset(recipe.unet_preset),
                             DiffusionTrainingConfig(crop_frames=recipe.crop_frames, prediction=recipe.unet_prediction,
                                                     condition=condition))
        train(task, TrainConfig(steps=steps, batch_size=recipe.unet_batch, lr=recipe.unet_lr,
                                save_every=max(1, steps // 4), **loop),
              run, resume=(run / CHECKPOINT_NAME).is_file(), progress=progress)
        return run / CHECKPOINT_NAME

    unet = train_unet(work / "unet", IMAGE, recipe.unet_steps)
    stage("unet")
    # The CLIP-TTA baseline: the UNet's recipe with the label's text embedding as its condition.
    # Seeded like the prior, so that it does not depend on the stages before (or on resuming).
    torch.manual_seed(recipe.seed)
    tta = train_unet(work / "tta", TEXT, recipe.tta_steps)
    stage("clip-tta")
    # The prior's initial weights are drawn from the recipe's seed, not from whatever state the
    # stages before left the generator in (which differs on resume). (With 1.1.0's drawn position
    # bias they decided whether the loss ever left the plateau of the mean embedding; `PriorTask`.)
    torch.manual_seed(recipe.seed)
    prior_task = PriorTask(train_set, PriorConfig.preset("tiny"))
    prior_run = work / "prior"
    train(prior_task, TrainConfig(steps=recipe.prior_steps, batch_size=recipe.prior_batch, lr=recipe.prior_lr,
                                  save_every=max(1, recipe.prior_steps // 2), **{**loop, "weight_decay": 0.06}),
          prior_run, resume=(prior_run / CHECKPOINT_NAME).is_file(), progress=progress)
    stage("prior")
    vggish_path = work / "vggish.pt"
    if not vggish_path.is_file():
        from clipsonic.demo.embedding import train_demo_vggish
        from clipsonic.demo.synthetic import CLASSES
        from clipsonic.vggish import save_vggish

        bar = progress_bar(recipe.vggish_steps, "vggish", progress)
        save_vggish(vggish_path, train_demo_vggish(
            train_specs, CLASSES, recipe.vggish_steps, recipe.vggish_batch, recipe.vggish_lr, seed=recipe.seed,
            progress=(lambda step, loss: bar.update(1) or bar.set_postfix(loss=f"{loss:.3f}", refresh=False))
            if bar else None))
        if bar:
            bar.close()
    stage("vggish")

    staging = out.with_name(out.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    make_bundle(staging, clip_path, unet, prior=prior_run / CHECKPOINT_NAME, vggish=vggish_path, tta=tta,
                vocabulary=demo_vocabulary(), guidance=recipe.gate_guidance)
    gate = quality_gate(load_for_gate(staging, recipe), recipe, progress=progress, vggish=gate_vggish(staging))
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
        raise ClipsonicError(f"{path}: no demo bundle here (build one with clipsonic.demo.retrain)") from None
