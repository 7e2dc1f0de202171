"""What Griffin-Lim does to the level and peak of each demo class (the [demo] issue).

For every class of the demo data, `--clips` clips of `--seconds` s straight from the synthesizer
(no AAC) are turned into the demo UNet's log-mel (the paper's settings: 16 kHz, n_fft 2048, hop 512, 64 bands) and back
by Griffin-Lim, three times: the classic algorithm (magnitudes fixed at one inversion of the mel,
``refit=False``), the rebuilt magnitudes refitted to the mel every iteration, and that with the
phases searched within the peak limit (the default, `clipsonic.audio.PEAK_LIMIT`). Per class it
prints the median over the clips of the level change (dB), the peak ratio, the mean absolute
log-mel error of the re-analysed output and the highest output peak, then each algorithm's time
for all clips. ``--peak P`` scales every clip to peak P first (0.6: the loudest the data gets).

    python benchmarks/griffin_lim_level.py --clips 6 --seconds 4 [--peak 0.6]
"""

import argparse
import time

import numpy as np
import torch

from clipsonic.audio import PAPER_MEL, griffin_lim, mel_spectrogram
from clipsonic.demo.synthetic import CLASSES, synthesize_audio

ALGORITHMS = {"classic": dict(refit=False, peak_limit=None), "refit": dict(refit=True, peak_limit=None),
              "refit, peak-limited": dict(refit=True)}


def level_db(wav: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(wav, dtype=np.float64)) + 1e-20))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--peak", type=float, help="scale every clip to this peak first (default: as synthesized)")
    args = parser.parse_args()
    seconds = {name: 0.0 for name in ALGORITHMS}
    print("| class | " + " | ".join(f"{name}: level (dB), peak ×, log-mel error, highest peak" for name in ALGORITHMS)
          + " |")
    print("|---|" + "---|" * len(ALGORITHMS))
    for label in CLASSES:
        rng = np.random.default_rng(args.seed)
        real = np.stack([synthesize_audio(label, rng, args.seconds) for _ in range(args.clips)])
        if args.peak is not None:
            real *= args.peak / np.abs(real).max(axis=1, keepdims=True)
        log_mel = mel_spectrogram(torch.from_numpy(real), PAPER_MEL)
        cells = []
        for name, settings in ALGORITHMS.items():
            started = time.perf_counter()
            rebuilt = griffin_lim(log_mel, PAPER_MEL, **settings).numpy()
            seconds[name] += time.perf_counter() - started
            original = real[:, :rebuilt.shape[1]]
            level = np.median([level_db(a) - level_db(b) for a, b in zip(rebuilt, original)])
            peak = np.median(np.abs(rebuilt).max(axis=1) / np.abs(original).max(axis=1))
            error = (mel_spectrogram(torch.from_numpy(rebuilt), PAPER_MEL) - log_mel).abs().mean().item()
            cells.append(f"{level:+.2f}, {peak:.2f}, {error:.3f}, {np.abs(rebuilt).max():.2f}")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    print("time for all clips: " + ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items()))


if __name__ == "__main__":
    main()
