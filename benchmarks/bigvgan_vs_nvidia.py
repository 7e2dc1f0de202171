"""Time NVIDIA's BigVGAN package (its torch path) against clipsonic's BigVGAN on the same weights.

NVIDIA's package is a reference only, never a dependency: run this in the scratch environment of
tests/fixtures/generate_vocoder_fixtures.py::

    /tmp/scratch/bin/python benchmarks/bigvgan_vs_nvidia.py [--channels 512 1536] [--seconds 4]

Both get the same random weights (NVIDIA's weight-norm layout, loaded by `load_bigvgan`);
ours runs its C++ anti-aliased activation, in float32 and bfloat16.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "fixtures")]
from generate_vocoder_fixtures import CONFIG  # noqa: E402
from seeded import seeded_state_dict  # noqa: E402

from bigvgan.bigvgan import BigVGAN as NvidiaBigVGAN  # noqa: E402
from bigvgan.env import AttrDict  # noqa: E402

from clipsonic.bench import time_call  # noqa: E402
from clipsonic.nn import set_precision  # noqa: E402
from clipsonic.vocoder import BigVGANConfig, load_bigvgan  # noqa: E402


def median_seconds(fn, repeat=3):
    return time_call(fn, repeat)[0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--channels", type=int, nargs="+", default=[512, 1536])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"threads: {torch.get_num_threads()}")
    print("| channels | NVIDIA torch path fp32 s | clipsonic fp32 s | clipsonic bf16 s | fp32 speed-up | bf16 speed-up "
          "| bf16 relative error |")
    print("|---|---|---|---|---|---|---|")
    for channels in args.channels:
        config = {**CONFIG, "upsample_initial_channel": channels}
        reference = NvidiaBigVGAN(AttrDict(dict(config)), use_cuda_kernel=False).eval()
        state = reference.state_dict()
        learned = {k: tuple(v.shape) for k, v in state.items() if not k.endswith(".filter")}
        reference.load_state_dict({**state, **seeded_state_dict(learned, 31)})
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "bigvgan_generator.pt"
            torch.save({"generator": reference.state_dict()}, path)
            ours = load_bigvgan(path, BigVGANConfig.from_dict({k: v for k, v in config.items()
                                                               if k in BigVGANConfig.__dataclass_fields__}))
        mel = torch.randn(1, 64, round(args.seconds * 16000 / 512), generator=torch.Generator().manual_seed(0)) - 5
        with torch.inference_mode():
            expected = reference(mel)
        nvidia = median_seconds(lambda: reference(mel), args.repeat)
        fp32 = median_seconds(lambda: ours(mel), args.repeat)
        set_precision(ours, torch.bfloat16)
        bf16 = median_seconds(lambda: ours(mel), args.repeat)
        with torch.inference_mode():
            error = ((ours(mel).float() - expected).norm() / expected.norm()).item()
        print(f"| {channels} | {nvidia:.3f} | {fp32:.3f} | {bf16:.3f} | {nvidia / fp32:.2f}x | {nvidia / bf16:.2f}x "
              f"| {error:.1e} |")


if __name__ == "__main__":
    main()
