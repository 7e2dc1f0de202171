"""How long the README's main command takes, as a whole process and stage by stage ([product] issue).

    python benchmarks/main_command.py --repeat 5

1. The whole command (`clipsonic sample --text "a photo of rain" -o rain.wav`, the demo bundle),
   warm (one run first builds the extensions and fills the file cache), timed from outside as
   `/usr/bin/time` would: the default precision and `--dtype fp32`, in the same run.
2. The same work in a fresh interpreter with a clock between stages: importing torch, importing
   the rest, loading the bundle, encoding the text (tokenizer included), the prior, the UNet, the
   vocoder (Griffin-Lim) and writing the file. What is left of (1) is the CLI's own start-up.

Both run as a user runs them: from a wheel of this checkout installed (`pip install --no-deps`) in
a fresh venv that sees this interpreter's torch, from an empty folder. (An editable checkout is
slower to start where PYTHONDONTWRITEBYTECODE is set, as on this project's machines: its modules
are compiled again on every run, ~0.3 s; a wheel's are compiled once, at install.)

`--baseline REF` also times the command of an earlier commit in the same run (its source tree,
byte-compiled, run with `python -m clipsonic`: a commit whose wheel misses a subpackage still runs).

Prints Markdown tables (median and best of --repeat) with the CPU model; nothing is written
outside a temporary folder.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMAND = ["sample", "--text", "a photo of rain", "-o", "rain.wav", "-q"]

# Run in a fresh interpreter: one process, a clock between stages, JSON on stdout.
STAGES = r"""
import json, sys, time
clock = [time.perf_counter()]
times = {}
def stage(name):
    clock.append(time.perf_counter()); times[name] = clock[-1] - clock[-2]
import torch
stage("import torch")
from clipsonic import runtime
from clipsonic.audio import playable, save_audio
from clipsonic.pipeline import Pipeline
from clipsonic.tokenizer import tokenize
stage("import clipsonic, numpy, soundfile, ...")
dtype = runtime.resolve_dtype(sys.argv[1], torch.device("cpu"))
pipeline = Pipeline.load(dtype=dtype)
stage("load the bundle (CLIP, UNet, prior)")
text = "a photo of rain"
warning = pipeline.unfamiliar_prompt(text)
tokens = tokenize([text], pipeline.clip.config.context_length)
stage("tokenizer + demo prompt check")
from clipsonic.prior import text_condition
with torch.inference_mode():
    text_embed, encodings = text_condition(pipeline.clip, tokens)
stage("text encoding")
query = pipeline.query(text=text, variant="sd", seed=0)
stage("prior (64 DDIM steps, 2 candidates)")
mel = pipeline.generate_mel(query, seed=0)
stage("UNet (DPM-Solver++ 25 steps, guided)")
wav = pipeline.vocode(mel, 4.0, seed=0)
stage("vocoder (Griffin-Lim, 64 iterations)")
save_audio(sys.argv[2], playable(wav[0], 16000)[0])
stage("level check + writing the WAV")
print(json.dumps(times))
"""


def wheel_environment(folder: Path) -> Path:
    """A fresh venv (seeing this interpreter's packages) with this checkout's wheel: its bin folder."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(folder / "wheel"), str(ROOT)], check=True, capture_output=True)
    venv.create(folder / "env", with_pip=True, system_site_packages=True)
    (wheel,) = (folder / "wheel").glob("clipsonic-*.whl")
    subprocess.run([folder / "env" / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True)
    return folder / "env" / "bin"


def baseline_tree(reference: str, folder: Path) -> Path:
    """The source tree of commit `reference`, byte-compiled as an install would be."""
    tree = folder / "baseline"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", reference], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "clipsonic")], check=True)
    return tree


def whole_command(command: list, folder: Path, extra: list[str], repeat: int, env: dict | None = None) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([*command, *COMMAND, *extra], cwd=folder, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each measurement")
    parser.add_argument("--baseline", metavar="REF", help="also time this earlier commit's command (e.g. HEAD~3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        bin_folder = wheel_environment(Path(folder))
        work = Path(folder) / "empty"
        work.mkdir()
        ours = [bin_folder / "clipsonic"]
        whole_command(ours, work, [], 1)  # warm-up: extension builds, file cache
        rows = {"default (auto precision)": whole_command(ours, work, [], args.repeat),
                "--dtype fp32": whole_command(ours, work, ["--dtype", "fp32"], args.repeat)}
        if args.baseline:
            import os

            env = {**os.environ, "PYTHONPATH": str(baseline_tree(args.baseline, Path(folder)))}
            theirs = [sys.executable, "-m", "clipsonic"]
            whole_command(theirs, work, [], 1, env)
            rows[f"commit {args.baseline}, its default"] = whole_command(theirs, work, [], args.repeat, env)
        stages: dict[str, dict[str, list[float]]] = {}
        for dtype in ("auto", "fp32"):
            for _ in range(args.repeat):
                done = subprocess.run([bin_folder / "python", "-c", STAGES, dtype, str(work / "stage.wav")],
                                      check=True, capture_output=True, text=True, cwd=work)
                for name, seconds in json.loads(done.stdout).items():
                    stages.setdefault(name, {}).setdefault(dtype, []).append(seconds)
    from clipsonic.bench import cpu_model
    from clipsonic.runtime import auto_dtype

    import torch

    picked, why = auto_dtype(torch.device("cpu"))
    print(f"{time.strftime('%Y-%m-%d')}, {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"auto precision = {picked} ({why})\n")
    print(f"| `clipsonic {' '.join(COMMAND)}`, whole process | median s | best s |")
    print("|---|---|---|")
    for name, times in rows.items():
        print(f"| {name} | {statistics.median(times):.2f} | {min(times):.2f} |")
    print(f"\n| stage (fresh interpreter) | auto ({picked}) median s | fp32 median s |")
    print("|---|---|---|")
    for name, by_dtype in stages.items():
        print(f"| {name} | {statistics.median(by_dtype['auto']):.3f} | {statistics.median(by_dtype['fp32']):.3f} |")
    totals = {dtype: sum(statistics.median(by[dtype]) for by in stages.values()) for dtype in ("auto", "fp32")}
    print(f"| **sum of stages** | **{totals['auto']:.2f}** | **{totals['fp32']:.2f}** |")


if __name__ == "__main__":
    main()
