"""Time OpenAI's own CLIP code against clipsonic's CLIP (fp32 and bf16) in one process.

OpenAI's code is a reference only, never a dependency: run this in a scratch environment
that has PyPI's ``openai-clip`` (its torchvision import is stubbed by the fixture generator)::

    /tmp/scratch/bin/python benchmarks/clip_vs_openai.py

Both models get the same random ViT-L/14 weights; the inputs are random 224 px images.
"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "fixtures")]
import generate_clip_fixtures  # noqa: E402,F401  (installs the torchvision stand-in)
from clip.model import CLIP as OpenAICLIP  # noqa: E402

from clipsonic.bench import time_call  # noqa: E402
from clipsonic.clip import CLIP, CLIPConfig  # noqa: E402
from clipsonic.nn import set_precision  # noqa: E402


def median_seconds(fn, repeat=3):
    return time_call(fn, repeat)[0]


def main():
    reference = OpenAICLIP(768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12).float().eval()
    ours = CLIP(CLIPConfig()).eval()
    ours.load_state_dict(reference.state_dict())
    ours_bf16 = set_precision(CLIP(CLIPConfig()).eval(), torch.bfloat16)
    ours_bf16.load_state_dict(reference.state_dict())
    set_precision(ours_bf16, torch.bfloat16)
    print(f"threads: {torch.get_num_threads()}")
    print("| batch | openai/CLIP fp32 s | clipsonic fp32 s | clipsonic bf16 s | bf16 speed-up vs openai |")
    print("|---|---|---|---|---|")
    for batch in (1, 16):
        pixels = torch.randn(batch, 3, 224, 224)
        openai_s = median_seconds(lambda: reference.encode_image(pixels))
        fp32_s = median_seconds(lambda: ours.encode_image(pixels))
        bf16_s = median_seconds(lambda: ours_bf16.encode_image(pixels))
        print(f"| {batch} | {openai_s:.3f} | {fp32_s:.3f} | {bf16_s:.3f} | {openai_s / bf16_s:.2f}x |")


if __name__ == "__main__":
    main()
