"""`clipsonic bundle make|verify`: a folder of models with the sha256 of each file."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from clipsonic.cli.common import command_group, help_formatter
from clipsonic.errors import ClipsonicError


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    actions = command_group(commands, "bundle", "make and check a bundle: the models sample and eval load together",
                             "A bundle is a folder of the models `sample --bundle` and `eval --bundle` load (CLIP, "
                             "UNet, optional prior and vocoder) with bundle.json, which records each file's sha256, "
                             "checked at every load.")
    make = actions.add_parser("make", parents=[common], formatter_class=help_formatter,
                              help="build a bundle from checkpoints (training runs, official files)",
                              description="Build a bundle folder: CLIP, prior and vocoder converted to our "
                                          "checkpoints (each reloaded and compared), the UNet's training checkpoint "
                                          "stripped to its EMA weights, every model loaded and checked to fit the "
                                          "others, then bundle.json written and the folder put in place at once.")
    make.add_argument("out", type=Path, help="the bundle folder to write (replaced if it is a bundle)")
    make.add_argument("--clip", type=Path, required=True,
                      help="the CLIP the UNet was trained with (OpenAI .pt, state dict, Hugging Face, ours)")
    make.add_argument("--unet", type=Path, required=True, help="UNet checkpoint from `clipsonic train`")
    make.add_argument("--prior", type=Path, help="diffusion prior (from train-prior, or LAION's latest.pth)")
    make.add_argument("--prior-config", type=Path, help="LAION's prior_config.json (default: beside --prior)")
    make.add_argument("--vocoder", type=Path, help="BigVGAN (from train-vocoder, or NVIDIA's bigvgan_generator.pt)")
    make.add_argument("--vocoder-config", type=Path, help="NVIDIA's config.json (default: beside --vocoder)")
    make.add_argument("--vggish", type=Path, help="an audio embedding for eval's FAD (torchvggish's or ours)")
    make.add_argument("--tta", type=Path, help="a UNet from `train --cond clip-text` (or clap-text): eval's "
                                               "CLIP-TTA (CLAP-TTA) baseline row")
    make.add_argument("--guidance", type=float, help="the guidance weight sample and eval use when given none "
                                                      "(default: none recorded, so the paper's 1.5)")
    make.set_defaults(handler=_bundle_make)
    check = actions.add_parser("verify", parents=[common], formatter_class=help_formatter,
                               help="check a bundle's files against its bundle.json and load its models",
                               description="Hash each file of a bundle against bundle.json, then load every model "
                                           "and check they fit each other. Exit 1 on any difference.")
    check.add_argument("folder", type=Path, nargs="?", help="bundle folder (default: the shipped demo bundle)")
    check.set_defaults(handler=_bundle_verify)


def _bundle_make(args: argparse.Namespace) -> int:
    from clipsonic.bundle import make_bundle

    if args.guidance is not None and not (math.isfinite(args.guidance) and args.guidance >= 0):
        args.usage_error(f"--guidance {args.guidance}: must be a non-negative number")
    made = make_bundle(args.out, args.clip, args.unet, prior=args.prior, prior_config=args.prior_config,
                       vocoder=args.vocoder, vocoder_config=args.vocoder_config, vggish=args.vggish,
                       tta=args.tta, guidance=args.guidance)
    for role, path in made.files.items():
        print(f"{role:<8} {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"wrote    {made.folder / 'bundle.json'} (sha256 of each file, checked at every load)")
    return 0


def _bundle_verify(args: argparse.Namespace) -> int:
    from clipsonic.bundle import load_models, load_tta, open_bundle, shipped_bundle

    opened = open_bundle(args.folder or shipped_bundle())
    if not opened.verified:
        raise ClipsonicError(f"{opened.folder}: has no bundle.json, so there is nothing to check its files against "
                             f"(make it with 'clipsonic bundle make')")
    for role, path in opened.files.items():
        print(f"{role:<8} ok  {path}")
    clip_model = load_models(opened)[0]
    if opened.path("tta") is not None:
        load_tta(opened.path("tta"), clip_model)
    print(f"{opened.folder}: every file matches bundle.json and the models fit each other")
    return 0
