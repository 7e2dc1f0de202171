"""What Griffin-Lim does to the level and peak of each demo class (the [demo] issue).

For every class of the demo data, `--clips` clips of `--seconds` s straight from the synthesizer
(no AAC) are turned into the demo UNet's log-mel (the paper's settings: 16 kHz, n_fft 2048, hop 512, 64 bands) and back
by Griffin-Lim, twice: the classic algorithm (magnitudes fixed at one inversion of the mel,
``refit=False``) and ours (the rebuilt magnitudes refitted to the mel every iteration). Per class
it prints the median over the clips of the level change (dB), the peak ratio, and the mean
absolute log-mel error of the re-analysed output, then each algorithm's time for all clips.

    python benchmarks/griffin_lim_level.py --clips 6 --seconds 4
"""

import argparse
import time

import numpy as np
import torch

from clipsonic.audio import PAPER_MEL, griffin_lim, mel_spectrogram
from clipsonic.demo.synthetic import CLASSES, synthesize_audio

ALGORITHMS = {"classic": False, "refit": True}


def level_db(wav: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(wav, dtype=np.float64)) + 1e-20))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    seconds = {name: 0.0 for name in ALGORITHMS}
    print("| class | " + " | ".join(f"{name}: level (dB), peak ×, log-mel error" for name in ALGORITHMS) + " |")
    print("|---|" + "---|" * len(ALGORITHMS))
    for label in CLASSES:
        rng = np.random.default_rng(args.seed)
        real = np.stack([synthesize_audio(label, rng, args.seconds) for _ in range(args.clips)])
        log_mel = mel_spectrogram(torch.from_numpy(real), PAPER_MEL)
        cells = []
        for name, refit in ALGORITHMS.items():
            started = time.perf_counter()
            rebuilt = griffin_lim(log_mel, PAPER_MEL, refit=refit).numpy()
            seconds[name] += time.perf_counter() - started
            original = real[:, :rebuilt.shape[1]]
            level = np.median([level_db(a) - level_db(b) for a, b in zip(rebuilt, original)])
            peak = np.median(np.abs(rebuilt).max(axis=1) / np.abs(original).max(axis=1))
            error = (mel_spectrogram(torch.from_numpy(rebuilt), PAPER_MEL) - log_mel).abs().mean().item()
            cells.append(f"{level:+.2f}, {peak:.2f}, {error:.3f}")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    print("time for all clips: " + ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items()))


if __name__ == "__main__":
    main()
