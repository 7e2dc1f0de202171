"""Time frechet-audio-distance's VGGish FAD pipeline against clipsonic's, end to end, in one process.

The references are never dependencies: run this in the scratch environment of
tests/fixtures/make_vggish_fixture.py (PyPI's ``torchvggish`` 0.2, ``frechet_audio_distance``
0.3.4 and ``resampy``, installed with --no-deps)::

    /tmp/scratch/bin/python benchmarks/fad_vs_reference.py [--clips 512] [--seconds 4]

Two sets of synthetic 16 kHz clips go waveform -> VGGish embeddings -> statistics -> Fréchet
distance. The reference is ``FrechetAudioDistance.get_embeddings`` / ``calculate_embd_statistics``
/ ``calculate_frechet_distance`` as ``score`` calls them, with its VGGish built as its torch.hub
entry point builds it (``harritaylor/torchvggish``: ``waveform_to_examples`` then the network,
one clip per call, no PCA, last ReLU dropped) from PyPI's torchvggish, so that nothing is
downloaded. Both sides get the same seeded random weights (tests/seeded.py). Reading files is
left out on both sides. ``--reference-clips N`` times the reference on the first N clips of
each set and scales its time linearly (its cost is per clip); the default runs all of them.
As shipped, the reference records autograd graphs (its examples require gradients);
``--reference-inference-mode`` times it without them.
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "fixtures")]
from make_vggish_fixture import WEIGHT_SEED  # noqa: E402
from reference_stubs import stub_modules  # noqa: E402
from seeded import seeded_state_dict  # noqa: E402

stub_modules("laion_clap", "encodec", "torchlibrosa.stft", "torchlibrosa.augmentation")  # unused model families
from frechet_audio_distance import FrechetAudioDistance  # noqa: E402
from torchvggish import vggish_input  # noqa: E402
from torchvggish.torchvggish import VGG, make_layers  # noqa: E402

from clipsonic.metrics import frechet_distance  # noqa: E402
from clipsonic.vggish import VGGish, load_vggish  # noqa: E402

SAMPLE_RATE = 16000


def synthetic_clips(count, seconds, seed, brightness):
    """Chirps with harmonics, tone bursts and coloured noise; `brightness` shifts the spectra,
    so the two sets differ in distribution. float32 [T] each."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    clips = []
    for _ in range(count):
        start, sweep = rng.uniform(100, 800) * brightness, rng.uniform(-200, 900) * brightness
        phase = 2 * np.pi * (start * t + sweep * t**2 / 2)
        wav = sum(rng.uniform(0.05, 0.3) / k * np.sin(k * phase) for k in range(1, 5))
        wav = wav * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 3) * t + rng.uniform(0, 6.3)))
        noise = np.cumsum(rng.standard_normal(t.size)) * 0.002 / brightness + rng.standard_normal(t.size) * 0.01
        clips.append((wav + noise - noise.mean()).astype(np.float32))
    return clips


class HubVGGish(VGG):
    """torchvggish's torch.hub ``VGGish(preprocess=True, postprocess=False)``: ``forward(x, fs)``
    turns one clip into examples, then runs the network (frechet-audio-distance's use)."""

    def __init__(self):
        super().__init__(make_layers(), postprocess=False)

    def forward(self, x, fs=None):
        return VGG.forward(self, vggish_input.waveform_to_examples(x, fs))


def reference_fad(state):
    """A FrechetAudioDistance set up as its __init__ does for VGGish, minus the downloads."""
    model = HubVGGish()
    model.load_state_dict(state)
    model.embeddings = torch.nn.Sequential(*list(model.embeddings.children())[:-1])  # use_activation=False
    fad = FrechetAudioDistance.__new__(FrechetAudioDistance)
    fad.model_name, fad.verbose, fad.device, fad.model = "vggish", False, torch.device("cpu"), model.eval()
    return fad


def reference_pipeline(fad, set_a, set_b):
    embeddings = [fad.get_embeddings(clips, sr=SAMPLE_RATE) for clips in (set_a, set_b)]
    stats = [fad.calculate_embd_statistics(e) for e in embeddings]
    return fad.calculate_frechet_distance(*stats[0], *stats[1]), embeddings


def our_pipeline(model, set_a, set_b):
    embeddings = [torch.cat(model.embed_clips([torch.from_numpy(clip) for clip in clips])).numpy()
                  for clips in (set_a, set_b)]
    return frechet_distance(*embeddings), embeddings


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def relative_error(ours, expected):
    return float(np.linalg.norm(ours - expected) / np.linalg.norm(expected))


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--clips", type=int, default=512, help="clips per set")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each clip")
    parser.add_argument("--reference-clips", type=int, default=None,
                        help="time the reference on this many clips per set and scale (default: all)")
    parser.add_argument("--reference-inference-mode", action="store_true",
                        help="run the reference under torch.inference_mode (as shipped it records autograd graphs)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of our pipeline (the best is reported)")
    args = parser.parse_args()

    set_a = synthetic_clips(args.clips, args.seconds, 1, brightness=1.0)
    set_b = synthetic_clips(args.clips, args.seconds, 2, brightness=1.6)
    state = seeded_state_dict({k: tuple(v.shape) for k, v in VGGish().state_dict().items()}, WEIGHT_SEED)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vggish-seeded.pth"
        torch.save(state, path)
        ours = {"fp32": load_vggish(path), "bf16": load_vggish(path, dtype=torch.bfloat16)}
    fad = reference_fad(state)
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical cores), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{args.clips} + {args.clips} clips of {args.seconds:g} s at 16 kHz")

    subset = args.reference_clips or args.clips
    with torch.inference_mode(args.reference_inference_mode):
        reference_s, (reference_value, reference_embeddings) = timed(reference_pipeline, fad, set_a[:subset],
                                                                      set_b[:subset])
    if subset != args.clips:
        reference_s *= args.clips / subset
    rows = []
    for name, model in ours.items():
        model.embed_clips([torch.from_numpy(c) for c in set_a[:8]])  # warm-up: oneDNN primitives, allocator
        seconds = []
        for _ in range(args.repeat):
            elapsed, (value, embeddings) = timed(our_pipeline, model, set_a, set_b)
            seconds.append(elapsed)
        # The embeddings of the clips the reference ran on (all of them, or the first --reference-clips).
        timed_part = [e[:len(r)] for e, r in zip(embeddings, reference_embeddings, strict=True)]
        error = relative_error(np.concatenate(timed_part), np.concatenate(reference_embeddings))
        comparable = frechet_distance(*timed_part) if subset != args.clips else value
        rows.append((name, min(seconds), value, comparable, error))

    label = "measured" if subset == args.clips else f"{subset} clips per set timed, scaled x{args.clips / subset:g}"
    label += ", inference mode" if args.reference_inference_mode else ", as shipped (autograd on)"
    print(f"\nreference (frechet-audio-distance 0.3.4 + torchvggish, fp32, {label}): {reference_s:.1f} s, "
          f"FAD {reference_value:.6f}" + (" (on the timed subset)" if subset != args.clips else ""))
    print("\n| pipeline | seconds | speed-up vs reference | FAD | FAD relative to reference "
          "| embedding relative error |")
    print("|---|---|---|---|---|---|")
    print(f"| frechet-audio-distance (fp32) | {reference_s:.2f} | 1.00x | {reference_value:.6f} | 0 | 0 |")
    for name, seconds, value, comparable, error in rows:
        print(f"| clipsonic ({name}) | {seconds:.2f} | {reference_s / seconds:.2f}x | {value:.6f} | "
              f"{comparable / reference_value - 1:+.1e} | {error:.1e} |")


if __name__ == "__main__":
    main()
