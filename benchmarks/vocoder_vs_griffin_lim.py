"""Does a BigVGAN small enough to train on this CPU beat Griffin-Lim on the demo data? (the [demo] choice)

Trains BigVGAN (`--preset`, default tiny) with `clipsonic train-vocoder` on the synthetic training
videos for `--minutes`, then scores both vocoders on held-out real clips (the test split of the
same synthetic recipe, straight from the synthesiser): mel-L1 between the real log-mel and the
log-mel of the vocoded waveform (BigVGAN's own validation measure, lower is better), and the
nearest-centroid accuracy of the demo's quality-gate classifier on the vocoded audio.

    python benchmarks/vocoder_vs_griffin_lim.py --data ~/.cache/clipsonic/demo-work/data --minutes 8

The held-out classifier is the quality gate's (fitted on reference clips, not on these test clips).
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from clipsonic.audio import MelConfig, griffin_lim, mel_spectrogram
from clipsonic.demo import DemoRecipe, held_out_classifier, mel_features
from clipsonic.demo.synthetic import clip_audio, plan_clips
from clipsonic.vocoder import load_bigvgan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="make-demo-data folder (its videos/ are used)")
    parser.add_argument("--out", type=Path, default=Path("vocoder-run"), help="train-vocoder run folder")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--minutes", type=float, default=8.0, help="training time budget")
    parser.add_argument("--steps-per-minute", type=int, default=12,
                        help="turns minutes into --steps (tiny preset: about 11.5 steps/min on 2 CPU cores)")
    args = parser.parse_args()

    steps = max(1, int(args.minutes * args.steps_per_minute))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clipsonic", "train-vocoder", str(args.data / "videos"), "--out",
                    str(args.out), "--preset", args.preset, "--steps", str(steps), "--batch-size", "4",
                    "--segment-samples", "8192", "--save-every", str(steps), "--validate-every", str(steps),
                    "--no-progress"] + (["--resume"] if (args.out / "checkpoint.pt").is_file() else []), check=True)
    trained = time.perf_counter() - started
    vocoder = load_bigvgan(args.out / "checkpoint.pt")
    config = MelConfig()
    recipe = DemoRecipe()
    classifier = held_out_classifier(recipe, config)
    specs = [spec for spec in plan_clips(recipe.clips_per_class, recipe.seed) if spec.split == "test"]
    scores = {"griffin-lim": ([], []), f"bigvgan-{args.preset}": ([], [])}
    for spec in specs:
        real = mel_spectrogram(torch.from_numpy(clip_audio(spec)), config)
        with torch.inference_mode():
            outputs = {"griffin-lim": griffin_lim(real[None], config)[0],
                       f"bigvgan-{args.preset}": vocoder(real[None])[0, 0].float()}
        for name, wav in outputs.items():
            again = mel_spectrogram(wav, config)
            frames = min(again.shape[-1], real.shape[-1])
            scores[name][0].append(float((again[:, :frames] - real[:, :frames]).abs().mean()))
            scores[name][1].append(classifier.predict(mel_features(again.numpy())[None])[0] == spec.label)
    print(f"trained {steps} steps of BigVGAN {args.preset} in {trained / 60:.1f} min; {len(specs)} held-out clips")
    print("| vocoder | mel-L1 (lower is better) | held-out classifier accuracy |")
    print("|---|---|---|")
    for name, (l1, correct) in scores.items():
        print(f"| {name} | {np.mean(l1):.3f} | {np.mean(correct):.0%} |")


if __name__ == "__main__":
    main()
