"""The reference half of `clipsonic bench clap`: laion_clap 1.1.7's audio embedding, timed.

`clipsonic bench clap --reference-python PYTHON` runs this file with PYTHON, the scratch
environment of tests/fixtures/make_clap_fixtures.py (laion_clap 1.1.7 and what it imports; never
a dependency of clipsonic)::

    PYTHON benchmarks/clap_reference.py FOLDER --batch 16 --repeat 1 --threads 2

FOLDER holds what the bench wrote: ``weights.pt`` (a CLAP state dict under clipsonic's keys,
LAION's names) and ``clips.npy`` (float32 [N, T] at 48 kHz). The model is
``CLAP_Module(enable_fusion=True, amodel="HTSAT-tiny")`` built offline as the fixture script
builds it; ``get_audio_embedding_from_data(batch, use_tensor=False)`` embeds `--batch` clips
at a time under ``torch.no_grad()`` (how its users call it), after one untimed batch. Writes
``reference.json`` (seconds per repeat over all clips, versions) and ``reference.npy`` (the
embeddings [N, 512]) into FOLDER.
"""

import argparse
import json
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "fixtures")]
from make_clap_fixtures import patch_downloads, reference_module  # noqa: E402


def main():
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("folder", type=Path, help="the folder the bench wrote (weights.pt, clips.npy)")
    parser.add_argument("--batch", type=int, default=16, help="clips per get_audio_embedding_from_data call")
    parser.add_argument("--repeat", type=int, default=1, help="timed passes over all clips")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    patch_downloads()
    state = torch.load(args.folder / "weights.pt", map_location="cpu", weights_only=True)
    module, _, _ = reference_module("fusion", state)
    clips = np.load(args.folder / "clips.npy")

    def embed_all():
        return np.concatenate([module.get_audio_embedding_from_data(clips[start:start + args.batch], use_tensor=False)
                               for start in range(0, len(clips), args.batch)])

    seconds = []
    with torch.no_grad():
        module.get_audio_embedding_from_data(clips[:args.batch], use_tensor=False)  # warm-up
        for _ in range(args.repeat):
            start = time.perf_counter()
            embeddings = embed_all()
            seconds.append(time.perf_counter() - start)
    np.save(args.folder / "reference.npy", embeddings.astype(np.float32))
    (args.folder / "reference.json").write_text(json.dumps({
        "seconds": seconds, "torch": torch.__version__, "laion_clap": metadata.version("laion_clap"),
        "threads": torch.get_num_threads()}), encoding="utf-8")


if __name__ == "__main__":
    main()
