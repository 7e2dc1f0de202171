"""`preprocess` throughput in one process and under torchrun with 1 and 2 ranks ([dataset] issue).

    python benchmarks/preprocess_ranks.py --clips 32 --seconds 6 --preset vit-b-32 --repeat 2

Makes `--clips` synthetic demo videos and a random-weight CLIP of `--preset`, then times whole
commands from outside, as a user runs them (start-up, CLIP loading, the merge and label encoding
included): `clipsonic preprocess` in one process with `--workers` decoding processes, and
`torchrun --standalone --nproc_per_node R -m clipsonic preprocess` for each R in `--ranks`, each
rank with its default share of the cores. Every run writes a fresh dataset folder; the median of
`--repeat` runs is reported in clips/s with the ratio to the single process of the same run, with
the CPU model. Nothing is written outside a temporary folder.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--preset", default="vit-b-32", help="CLIP preset of the random-weight model")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes of the single-process run")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    import torch

    from clipsonic.bench import cpu_model
    from clipsonic.clip import CLIP, CLIPConfig, save_clip
    from clipsonic.demo.synthetic import make_demo_data

    with tempfile.TemporaryDirectory(prefix="clipsonic-ranks-") as scratch:
        folder = Path(scratch)
        videos = make_demo_data(folder / "data", -(-args.clips // 8), 0, (args.seconds, args.seconds),
                                progress=False).videos
        for extra in sorted(videos.rglob("*.mp4"))[args.clips:]:
            extra.unlink()
        torch.manual_seed(0)
        clip = save_clip(folder / "clip.pt", CLIP(CLIPConfig.preset(args.preset)).eval())
        runs = iter(range(10**6))

        def preprocess(launcher: list[str], extra: list[str]) -> list[str]:
            return [sys.executable, *launcher, "-m", "clipsonic", "preprocess", str(videos), "--out",
                    str(folder / f"out-{next(runs)}"), "--clip", str(clip), "--no-progress", *extra]

        setups = [("1 process", [], ["--workers", str(args.workers)])]
        setups += [(f"torchrun, {ranks} rank(s)", ["-m", "torch.distributed.run", "--standalone",
                                                   f"--nproc_per_node={ranks}"], []) for ranks in args.ranks]
        seconds = {name: statistics.median(timed(preprocess(launcher, extra)) for _ in range(args.repeat))
                   for name, launcher, extra in setups}
    reference = seconds["1 process"]
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); torch {torch.__version__}; {args.clips} x "
          f"{args.seconds:g}-s videos, random-weight {args.preset} CLIP, median of {args.repeat}\n")
    print("| run | seconds | clips/s | vs 1 process |")
    print("|---|---:|---:|---:|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.1f} | {args.clips / value:.2f} | {reference / value:.2f}x |")


if __name__ == "__main__":
    main()
