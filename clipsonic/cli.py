"""The `clipsonic` command: a thin argparse shell over the library.

Heavy imports happen inside each command. A user error prints one line on stderr and exits
with 2 (usage) or 1 (failure); a traceback appears only with --debug. Library code never
imports this module.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from clipsonic import __version__
from clipsonic.errors import ClipsonicError, Interrupted, ParameterError
from clipsonic.variants import IMAGE, VARIANTS

log = logging.getLogger("clipsonic")

COMMON_DEFAULTS = {"device": "auto", "dtype": "fp32", "seed": None, "threads": None,
                   "verbose": 0, "quiet": False, "debug": False}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, exit 2. Each command's handler finds its
    own parser's `error` as ``args.usage_error`` for the checks argparse cannot make."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.set_defaults(usage_error=self.error)  # after the parents' defaults: the innermost parser wins

    def error(self, message: str):  # noqa: D401 - argparse's name
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None (the help text says what an absent value means)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _formatter(prog: str) -> argparse.HelpFormatter:
    return _Formatter(prog, max_help_position=32)


def _seed(text: str) -> int:
    from clipsonic.pipeline import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text} is out of range (0 to 2**63-1)")
    return value


def _common_options() -> argparse.ArgumentParser:
    """Options every command takes, before or after the command name.

    Defaults are suppressed here and filled in after parsing, so a value given before the
    command is not overwritten by the subcommand's default.
    """
    common = Parser(add_help=False, argument_default=argparse.SUPPRESS)
    group = common.add_argument_group("common options")
    group.add_argument("--device", metavar="DEV",
                       help="auto, cpu, cuda, cuda:N or mps (default: auto = CUDA when present)")
    group.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"],
                       help="compute precision of the models (default: fp32; for sample: auto = bf16 on CPUs that "
                            "compute it natively, else fp32)")
    group.add_argument("--seed", type=_seed, help="random seed for a reproducible run, 0 to 2**63-1 (default: none)")
    group.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    group.add_argument("-v", "--verbose", action="count", help="more log output (repeatable)")
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    group.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return common


def _command_group(commands: argparse._SubParsersAction, name: str, summary: str, description: str,
                   metavar: str = "ACTION") -> argparse._SubParsersAction:
    """A command with sub-commands (`clipsonic NAME ACTION ...`): the sub-parsers to add its actions to."""
    group = commands.add_parser(name, help=summary, description=description, formatter_class=_formatter)
    return group.add_subparsers(dest=f"{name}_{metavar.lower()}", metavar=metavar, required=True)


def _add_weights(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    actions = _command_group(commands, "weights", "list and verify model weight files",
                             "List and verify the weight files named in the manifest.")
    folder_help = ("folder holding downloaded official files; repeatable "
                   "(default: $CLIPSONIC_WEIGHTS or ~/.cache/clipsonic/weights)")

    listing = actions.add_parser("list", parents=[common], formatter_class=_formatter,
                                 help="show every known weight file, where it comes from and whether it is here",
                                 description="Show every weight file in the manifest: kind, whether a copy "
                                             "is present, its source and licence. Does not hash files.")
    listing.add_argument("--dir", type=Path, action="append", help=folder_help)
    listing.set_defaults(handler=_weights_list)

    check = actions.add_parser("verify", parents=[common], formatter_class=_formatter,
                               help="check the sha256 of the weight files that are present",
                               description="Hash every present weight file (or those named) against the "
                                           "manifest. Exit 1 on a mismatch or when a named file is missing.")
    check.add_argument("names", nargs="*", metavar="NAME", help="entries to verify (default: all present)")
    check.add_argument("--dir", type=Path, action="append", help=folder_help)
    check.set_defaults(handler=_weights_verify)

    importer = actions.add_parser("import-clip", parents=[common], formatter_class=_formatter,
                                  help="convert a CLIP checkpoint (OpenAI .pt, state dict, Hugging Face) to ours",
                                  description="Read a CLIP checkpoint in any supported layout (OpenAI TorchScript "
                                              "archive, OpenAI state dict, Hugging Face folder or file, ours), "
                                              "write it as a clipsonic checkpoint and verify the copy.")
    importer.add_argument("path", type=Path, help="checkpoint file or Hugging Face model folder")
    importer.add_argument("-o", "--output", type=Path,
                          help="where to write (default: clip-<name>.pt in the user weights folder)")
    importer.set_defaults(handler=_weights_import_clip)

    prior = actions.add_parser("import-prior", parents=[common], formatter_class=_formatter,
                               help="convert LAION's DALL-E 2 prior (latest.pth + prior_config.json) to ours",
                               description="Read LAION's diffusion prior (a plain state dict or one wrapped under "
                                           "'ema'/'model'; fp16 or fp32) with its prior_config.json, write it as a "
                                           "clipsonic checkpoint and verify the copy.")
    prior.add_argument("path", type=Path, help="the prior checkpoint, e.g. latest.pth")
    prior.add_argument("--config", type=Path, help="prior_config.json (default: beside the checkpoint; without one "
                                                   "the architecture is read off the tensor shapes)")
    prior.add_argument("-o", "--output", type=Path, help="where to write (default: prior-laion.pt in the user "
                                                         "weights folder)")
    prior.set_defaults(handler=_weights_import_prior)


def _add_bench(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    targets = _command_group(commands, "bench", "time our fast paths against their references",
                             "Time our fast paths against a reference measured in the same run; prints a Markdown "
                             "table (ratio > 1 means ours is faster).", metavar="TARGET")
    clip = targets.add_parser("clip", parents=[common], formatter_class=_formatter,
                              help="CLIP image encoding: eager fp32 against bf16/fp16",
                              description="Time CLIP image encoding in float32 (the eager reference) and in "
                                          "lower precision, with the cosine similarity of the outputs.")
    clip.add_argument("--preset", default="paper", help="CLIP size when no checkpoint is given "
                                                        "(paper = ViT-L/14, vit-b-32, tiny, ...); weights are random")
    clip.add_argument("--checkpoint", type=Path, help="time this CLIP checkpoint instead of random weights")
    clip.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="batch sizes")
    clip.add_argument("--compare", nargs="+", default=["bf16"], choices=["bf16", "fp16"],
                      help="precisions to compare with the fp32 reference")
    clip.add_argument("--repeat", type=int, default=3, help="timed runs per case (the median is reported)")
    clip.add_argument("--json", type=Path, help="also write the rows as JSON here")
    clip.set_defaults(handler=_bench_clip)

    sample = targets.add_parser("sample", parents=[common], formatter_class=_formatter,
                                help="text-to-audio generation: fp32 DDPM-1000 (the paper) against bf16 DPM-Solver++",
                                description="Time one guided UNet step in fp32 and bf16, and text-to-audio "
                                            "generation end to end (CLIP text encoding, sampling, Griffin-Lim): "
                                            "ours (bf16, DPM-Solver++) against the paper's setting (fp32, "
                                            "DDPM with 1000 steps, timed over a few steps and scaled unless "
                                            "--full-reference). Random weights of the chosen sizes.")
    sample.add_argument("--preset", default="paper", help="UNet size (paper or tiny)")
    sample.add_argument("--clip-preset", default="paper", help="CLIP size for the text encoder")
    sample.add_argument("--seconds", type=float, default=4.0, help="audio length")
    sample.add_argument("--steps", type=int, default=25, help="DPM-Solver++ steps")
    sample.add_argument("--reference-steps", type=int, default=1000, help="DDPM steps of the reference")
    sample.add_argument("--full-reference", action="store_true", help="run every reference step instead of scaling")
    sample.add_argument("--repeat", type=int, default=3, help="timed runs per case (the median is reported)")
    sample.add_argument("--json", type=Path, help="also write the rows as JSON here")
    sample.set_defaults(handler=_bench_sample)

    vocoder = targets.add_parser("vocoder", parents=[common], formatter_class=_formatter,
                                 help="BigVGAN: the C++ anti-aliased activation and the whole vocoder vs the reference",
                                 description="Time the anti-aliased activation (C++ against the PyTorch reference, "
                                             "which computes what NVIDIA's torch path does) on typical BigVGAN shapes, "
                                             "and whole BigVGANs (random weights) on a few seconds of audio.")
    vocoder.add_argument("--preset", nargs="+", default=["paper", "paper-large"],
                         help="BigVGAN sizes (paper: 512 channels, paper-large: 1536, tiny)")
    vocoder.add_argument("--seconds", type=float, default=4.0, help="audio length")
    vocoder.add_argument("--repeat", type=int, default=3, help="timed runs per case (the median is reported)")
    vocoder.add_argument("--json", type=Path, help="also write the rows as JSON here")
    vocoder.set_defaults(handler=_bench_vocoder)

    pre = targets.add_parser("preprocess", parents=[common], formatter_class=_formatter,
                             help="preprocess throughput (clips/s): in-process fp32 against parallel decoding + bf16",
                             description="Make synthetic videos and time `preprocess` on them with a random-weight "
                                         "CLIP: decoding in the main process with an fp32 CLIP (the reference) "
                                         "against --workers decoding processes beside a bf16 CLIP.")
    pre.add_argument("--clip-preset", nargs="+", default=["paper", "vit-b-32"], help="CLIP sizes (paper = ViT-L/14)")
    pre.add_argument("--clips", type=int, default=16, help="videos")
    pre.add_argument("--seconds", type=float, default=8.0, help="length of each video")
    pre.add_argument("--workers", type=int, default=2, help="decoding processes of our run")
    pre.add_argument("--repeat", type=int, default=1, help="timed runs per case (the median is reported)")
    pre.add_argument("--json", type=Path, help="also write the rows as JSON here")
    pre.set_defaults(handler=_bench_preprocess)

    ops = targets.add_parser("ops", parents=[common], formatter_class=_formatter,
                             help="our kernels (Triton on CUDA, C++ on CPU) against eager PyTorch",
                             description="Time fused attention (TFLOP/s, against torch SDPA; CUDA only), fused "
                                         "GroupNorm + scale-shift + SiLU (GB/s and % of the device's copy bandwidth, "
                                         "against eager GroupNorm + SiLU) and a UNet step with our ops against "
                                         "CLIPSONIC_OPS=reference, on --device (default: CUDA when present).")
    ops.add_argument("--precisions", nargs="+", default=["fp16", "bf16"], choices=["fp32", "fp16", "bf16"],
                     help="dtypes to time (fp16 is skipped on CPU)")
    ops.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096],
                     help="attention sequence lengths (head dim 64, 16 heads, batch 4)")
    ops.add_argument("--preset", default="paper", help="UNet size for the step timing ('none' to skip)")
    ops.add_argument("--frames", type=int, default=128, help="mel frames of the UNet step input")
    ops.add_argument("--repeat", type=int, default=10, help="timed runs per case (the median is reported)")
    ops.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ops.set_defaults(handler=_bench_ops)


def _add_eval(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    evaluation = commands.add_parser(
        "eval", parents=[common], formatter_class=_formatter,
        help="FAD (our VGGish), the paper's Tables 1 and 2, guidance sweeps; 'eval fad A B' for two folders",
        description="Generate --samples samples per model from the dataset's test split as the paper does (text "
                    "\"a photo of [label]\" for ZS/PD/SD/CLIP-TTA, the clip's frame for IQ), embed them with VGGish "
                    "and compute the FAD against the test clips' real audio; write Table 1 (FAD; the CLAP score is "
                    "not computed), Table 2 (cosine similarities), a guidance sweep (CSV, Markdown, PNG with "
                    "matplotlib) and summary.json to --out. 'clipsonic eval fad DIR_A DIR_B' gives the FAD "
                    "between two folders of audio instead.")
    evaluation.add_argument("dataset", type=Path, help="dataset folder from `clipsonic preprocess` (its test split)")
    evaluation.add_argument("--out", type=Path, required=True, help="results folder")
    _add_model_options(evaluation)
    evaluation.add_argument("--tta-checkpoint", type=Path, help="a UNet from `train --text-cond`: the CLIP-TTA row")
    evaluation.add_argument("--vggish", type=Path, help="VGGish weights (torchvggish's vggish-10086976.pth; default: "
                                                        "from the user weights folder)")
    evaluation.add_argument("--variants", help="comma-separated subset of iq,zs,pd,sd,tta (default: every one the "
                                               "given models allow)")
    evaluation.add_argument("--samples", type=int, default=512, help="samples per model and guidance weight (K)")
    evaluation.add_argument("--guidance", type=float, default=1.5, help="classifier-free guidance weight w")
    evaluation.add_argument("--guidance-sweep", help="comma-separated weights, e.g. 1,1.5,2,3 (replaces --guidance)")
    _add_sampling_options(evaluation)
    evaluation.add_argument("--batch", type=int, default=16, help="samples generated together")
    evaluation.add_argument("--save-audio", action="store_true", help="also keep the generated audio in --out/samples")
    evaluation.add_argument("--no-reconstruction", action="store_true", help="skip the mel-reconstruction row")
    evaluation.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluation.set_defaults(handler=_eval)

    # `clipsonic eval fad A B`: main() routes "eval fad" here (argparse cannot mix the two forms).
    fad = commands.add_parser("eval-fad", parents=[common], formatter_class=_formatter, prog="clipsonic eval fad",
                              description="FAD (VGGish embeddings, float64 Fréchet distance) between two folders of "
                                          "audio or video files (searched recursively); either may instead be a "
                                          "statistics .npz written by --save-stats or by `clipsonic eval`.")
    fad.add_argument("a", type=Path, help="first folder (or .npz)")
    fad.add_argument("b", type=Path, help="second folder (or .npz)")
    fad.add_argument("--vggish", type=Path, help="VGGish weights (default: from the user weights folder)")
    fad.add_argument("--save-stats", type=Path, help="also write each folder's statistics here (A.npz, B.npz)")
    fad.set_defaults(handler=_eval_fad)


def _add_demo(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    data = commands.add_parser("make-demo-data", parents=[common], formatter_class=_formatter,
                               help="write the synthetic audio-visual demo dataset (8 classes of videos + labels.csv)",
                               description="Write procedural videos of 8 sound classes (rain, bell, bird, engine, "
                                           "drum, siren, wind, clock: 224x224 at 4 fps, 16 kHz mono, 4-10 s) whose "
                                           "pictures and sounds both tell the class, and OUT/labels.csv "
                                           "(file,label,split; the last 20% of each class is test). Deterministic "
                                           "for a --seed; re-running keeps finished videos.")
    data.add_argument("out", type=Path, help="output folder (OUT/videos, OUT/labels.csv)")
    data.add_argument("--clips-per-class", type=int, default=12, help="videos per class")
    data.add_argument("--min-seconds", type=float, default=4.0, help="shortest clip")
    data.add_argument("--max-seconds", type=float, default=10.0, help="longest clip")
    data.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="videos made at a time")
    data.add_argument("--no-progress", action="store_true", help="no progress bar")
    data.set_defaults(handler=_make_demo_data)

    demo = commands.add_parser("demo", parents=[common], formatter_class=_formatter,
                               help="the shipped demo bundle: show it, check its quality gate, or retrain it",
                               description="Without options: where the demo bundle is, how it was made and its "
                                           "recorded quality gate. --check measures the gate again (SD and IQ "
                                           "samples of each class must be recognised by a classifier fitted on "
                                           "held-out real clips, 80% per class). --retrain rebuilds the bundle from "
                                           "nothing: synthetic videos, contrastive CLIP, preprocess, UNet, prior "
                                           "(about 30 min on 2 CPU cores).")
    action = demo.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="measure the quality gate of the bundle again (and "
                                                             "record it in its demo.json)")
    action.add_argument("--retrain", action="store_true", help="rebuild the bundle")
    demo.add_argument("--bundle", type=Path, help="bundle folder (default: the shipped one)")
    demo.add_argument("--work", type=Path, help="--retrain's working folder (data, runs; resumable) "
                                                "(default: ~/.cache/clipsonic/demo-work)")
    demo.add_argument("--recipe", default="demo", help="--retrain recipe: demo, or smoke (a seconds-long check)")
    demo.add_argument("--workers", type=int, default=2, help="decoding and encoding processes for --retrain")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(handler=_demo)


def _add_preprocess(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    pre = commands.add_parser("preprocess", parents=[common], formatter_class=_formatter,
                              help="turn a folder of videos into a training set (log-mels + CLIP frame embeddings)",
                              description="Decode every video below a folder (any container ffmpeg reads): the 16 kHz "
                                          "mono soundtrack's log-mel, and CLIP image embeddings of frames spread over "
                                          "the clip, with labels when a labels file is given. Unusable videos are "
                                          "listed in skipped.csv with the reason. Running it again adds only what is "
                                          "not done yet (also after a kill).")
    pre.add_argument("videos", type=Path, help="folder of videos (searched recursively)")
    pre.add_argument("--out", type=Path, required=True, help="dataset folder to write or extend")
    pre.add_argument("--labels", type=Path, help="labels: CSV 'file,label[,split]', VGGSound's vggsound.csv, or "
                                                 "MUSIC's JSON (default: unlabelled clips)")
    pre.add_argument("--clip", type=Path, help="CLIP checkpoint (default: ViT-L-14.pt from the user weights folder)")
    pre.add_argument("--workers", type=int,
                     help="decoding processes per rank (0: decode in the main process; default: this machine's "
                          "cores shared between its ranks, at most 4)")
    pre.add_argument("--frames-per-second", type=float, default=1.0, help="video frames embedded per second of clip")
    pre.add_argument("--min-frames", type=int, default=3, help="at least this many frames per clip")
    pre.add_argument("--min-seconds", type=float, default=2.05, help="shorter clips are skipped")
    pre.add_argument("--split-ratio", type=float, default=0.9,
                     help="train share of the clips whose split the labels do not give (random, from --seed)")
    pre.add_argument("--keep-frames", action="store_true", help="also keep the 224x224 frames (for image queries)")
    pre.add_argument("--batch", type=int, default=32, help="frames per CLIP forward pass")
    pre.add_argument("--shard-clips", type=int, default=256, help="clips per shard file")
    pre.add_argument("--retry-skipped", action="store_true", help="try the videos in skipped.csv again")
    pre.add_argument("--allow-unlabelled", action="store_true",
                     help="go on when the labels file names none of the videos (the clips get no label)")
    pre.add_argument("--add-source", action="store_true",
                     help="add the videos of this folder to a dataset made from another folder (both are recorded, "
                          "so train-vocoder and eval find every clip's audio)")
    pre.add_argument("--no-progress", action="store_true", help="no progress bar")
    pre.set_defaults(handler=_preprocess)


def _add_train(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    train = commands.add_parser("train", parents=[common], formatter_class=_formatter,
                                help="train the spectrogram diffusion UNet on a preprocessed dataset",
                                description="Train the CLIP-conditioned spectrogram UNet on a dataset folder "
                                            "written by `clipsonic preprocess`. Resumable (--resume); under "
                                            "torchrun it trains data-parallel on every process.")
    train.add_argument("dataset", type=Path, help="dataset folder")
    train.add_argument("--out", type=Path, required=True, help="run folder (checkpoint.pt, log.jsonl)")
    train.add_argument("--preset", default="paper", help="UNet size: paper (~121 M parameters) or tiny")
    _add_loop_options(train, steps=500_000, weight_decay=0.0)
    train.add_argument("--crop-frames", type=int, default=64, help="mel frames per training crop (64 = 2.048 s)")
    train.add_argument("--cond-drop", type=float, default=0.1, help="probability of the null condition")
    train.add_argument("--text-cond", action="store_true",
                       help='CLIP-TTA baseline: condition on CLIP text embeddings of "a photo of [label]"')
    train.set_defaults(handler=_train)

    prior = commands.add_parser("train-prior", parents=[common], formatter_class=_formatter,
                                help="train the SD diffusion prior (label text -> CLIP image embedding)",
                                description="Train the DALL-E 2 diffusion prior from scratch on a dataset folder's "
                                            '(CLIP text of "a photo of [label]", CLIP image embedding of a frame) '
                                            "pairs: the paper's SD variant. Resumable and torchrun-able like train.")
    prior.add_argument("dataset", type=Path, help="dataset folder (with labels.npz)")
    prior.add_argument("--out", type=Path, required=True, help="run folder (checkpoint.pt, log.jsonl)")
    prior.add_argument("--preset", default="paper", help="prior size: paper (LAION's architecture, 12 layers) or tiny")
    prior.add_argument("--depth", type=int, help="transformer layers (default: the preset's)")
    _add_loop_options(prior, steps=200_000, weight_decay=0.06)
    prior.add_argument("--text-drop", type=float, default=0.1, help="probability of hiding the text")
    prior.set_defaults(handler=_train_prior)

    vocoder = commands.add_parser("train-vocoder", parents=[common], formatter_class=_formatter,
                                  help="train the BigVGAN vocoder on a folder of audio (or videos)",
                                  description="Train BigVGAN with multi-period and multi-resolution discriminators, "
                                              "least-squares GAN, feature-matching and mel-L1 losses on random "
                                              "segments of the audio in a folder (videos' soundtracks too); the last "
                                              "part of the audio is held out and its mel-L1 logged. Resumable and "
                                              "torchrun-able like train.")
    vocoder.add_argument("audio", type=Path, help="folder of audio or video files (searched recursively), or a "
                                                  "dataset folder (its training clips' source files)")
    vocoder.add_argument("--out", type=Path, required=True, help="run folder (checkpoint.pt, log.jsonl)")
    vocoder.add_argument("--preset", default="paper", help="BigVGAN size: paper (512 channels), paper-large (1536), tiny")
    vocoder.add_argument("--segment-samples", type=int, default=32768, help="training segment length in samples")
    vocoder.add_argument("--discriminator-width", type=int, default=32, help="discriminators' base channel count")
    vocoder.add_argument("--validate-every", type=int, default=1000, help="held-out mel-L1 interval in steps")
    _add_loop_options(vocoder, steps=500_000, weight_decay=0.01, batch_size=16, ema=0.0)
    vocoder.add_argument("--lr-decay", type=float, default=0.9999996, help="per-step learning-rate decay factor")
    vocoder.set_defaults(handler=_train_vocoder)


def _add_loop_options(parser: argparse.ArgumentParser, steps: int, weight_decay: float, batch_size: int = 32,
                      ema: float = 0.9999) -> None:
    """The optimisation and checkpointing options the trainers share."""
    parser.add_argument("--steps", type=int, default=steps, help="total optimisation steps")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="global batch size (split over processes)")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=weight_decay, help="AdamW weight decay")
    parser.add_argument("--ema", type=float, default=ema, help="EMA decay of the weights that sampling uses (0: none)")
    parser.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm limit (0: none)")
    parser.add_argument("--bf16", action="store_true", help="autocast the forward pass to bfloat16")
    parser.add_argument("--save-every", type=int, default=5000, help="checkpoint interval in steps")
    parser.add_argument("--keep", type=int, default=2, help="numbered checkpoints kept besides the latest")
    parser.add_argument("--log-every", type=int, default=100, help="log.jsonl interval in steps")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """The models a generating command loads (none: the shipped demo bundle)."""
    parser.add_argument("--checkpoint", type=Path, help="UNet checkpoint from `clipsonic train`")
    parser.add_argument("--clip", type=Path, help="the CLIP checkpoint the UNet was trained with")
    parser.add_argument("--prior", type=Path, help="diffusion prior checkpoint (ours, or LAION's latest.pth)")
    parser.add_argument("--prior-config", type=Path, help="LAION's prior_config.json (default: beside --prior)")
    parser.add_argument("--vocoder", type=Path, help="BigVGAN checkpoint (ours, or NVIDIA's bigvgan_generator.pt); "
                                                     "default: Griffin-Lim")
    parser.add_argument("--vocoder-config", type=Path, help="NVIDIA's config.json (default: beside --vocoder)")
    parser.add_argument("--bundle", type=Path, help="a folder holding clip.pt, unet.pt (and prior.pt, vocoder.pt) "
                                                    "instead (default with no models: the shipped demo bundle)")


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sampler", choices=["ddpm", "ddim", "dpm++"], default="dpm++", help="sampler")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps (the paper: ddpm with 1000)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of the audio")


def _add_sample(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    sample = commands.add_parser("sample", parents=[common], formatter_class=_formatter,
                                 help="generate audio from a text or an image",
                                 description="Generate audio from a text (ZS: its CLIP text embedding) or an "
                                             "image (IQ: its CLIP image embedding) with a trained UNet; "
                                             "BigVGAN (--vocoder) or Griffin-Lim turns the mel into a waveform.")
    query = sample.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help='text query, e.g. "a photo of rain"')
    query.add_argument("--image", type=Path, help="image query (png, jpg, webp, ...)")
    sample.add_argument("--variant", choices=list(VARIANTS),
                        help="iq: image embedding; zs: text embedding; pd/sd: image embedding drawn from the text by "
                             "LAION's prior / a prior from train-prior; tta: a UNet trained with --text-cond (default: "
                             "iq for --image; for --text sd or pd when --prior is given, else zs, or tta)")
    _add_model_options(sample)
    sample.add_argument("--guidance", type=float, default=1.5, help="classifier-free guidance weight w")
    _add_sampling_options(sample)
    sample.add_argument("--batch", type=int, default=1, help="number of files to generate (a large batch runs in "
                                                             "chunks, each written as it is done)")
    sample.add_argument("-o", "--output", type=Path, required=True, help="output .wav or .flac "
                                                                          "(NAME_0, NAME_1, ... with --batch)")
    sample.add_argument("--loudness", type=float, metavar="LUFS",
                        help="normalise each file to this integrated loudness (ITU-R BS.1770), e.g. -23 "
                             "(default: keep the model's level; a file that would clip is scaled to peak at -1 dBFS)")
    sample.add_argument("--save-mel", action="store_true", help="also save each log-mel as .npy beside the audio")
    sample.set_defaults(handler=_sample, default_dtype="auto", quick_exit=True)


def _add_listen(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    actions = _command_group(commands, "listen", "blind listening tests as the paper's Tables 3-4: make the page, "
                             "score the answers", "Make a self-contained web page for a blind listening test "
                             "(fidelity and relevance, 1-5, as the paper's) and score the answer files it downloads.")
    make = actions.add_parser("make", parents=[common], formatter_class=_formatter,
                              help="write the test page (HTML, JS, CSS and the audio; no server needed)",
                              description="Write a static web page that runs a blind listening test: each trial "
                                          "shows a prompt (text or image) and every system's sample for it under a "
                                          "neutral name, in a per-listener order; fidelity and relevance are rated "
                                          "1-5; hidden attention checks; answers kept in the browser and downloaded "
                                          "as JSON. Files with the same name stem in every folder are one prompt.")
    make.add_argument("out", type=Path, help="folder to write (new, empty, or an earlier page, which is replaced)")
    make.add_argument("--system", action="append", required=True, metavar="NAME=FOLDER",
                      help="a system's samples, one audio file (.wav/.flac) per prompt; repeatable, in table order")
    make.add_argument("--reference", metavar="[NAME=]FOLDER",
                      help="the real recordings: rated like a system (as the row NAME, default 'ground truth') and "
                           "the source of the attention checks (default: none; the checks then use the first "
                           "--system's files)")
    make.add_argument("--prompts", type=Path, help="CSV 'file,prompt[,image]' (file: stem or file name; image: a "
                                                   "picture shown instead of the text, relative to the CSV) "
                                                   "(default: the prompt is the file name, e.g. 0003_dog_barking "
                                                   "-> 'dog barking')")
    make.add_argument("--per-listener", type=int, metavar="K", help="trials each listener gets, drawn from the "
                                                                     "prompts by their listener id (default: all)")
    make.add_argument("--checks", type=int, default=2, help="trials per listener with a degraded anchor, and as many "
                                                            "with a repeated sample (0: no attention checks)")
    make.add_argument("--title", default="Listening test", help="the page's title")
    make.set_defaults(handler=_listen_make)

    score = actions.add_parser("score", parents=[common], formatter_class=_formatter,
                               help="answer files -> MOS ± 95%% CI per system (Markdown, CSV, PNG)",
                               description="Read the answer files of one test, leave out listeners who fail the "
                                           "attention checks or did not finish (naming them), and write MOS ± 95%% "
                                           "CI per system for fidelity and relevance: mos.md, mos.csv (Student-t over "
                                           "all ratings and a listener bootstrap), listeners.csv and mos.png.")
    score.add_argument("results", type=Path, nargs="+", metavar="RESULTS",
                       help="answer files (.json) downloaded from the page, or folders holding them")
    score.add_argument("--out", type=Path, required=True, help="folder for mos.md, mos.csv, listeners.csv, mos.png")
    score.add_argument("--bootstrap", type=int, default=2000, help="listener resamplings of the bootstrap interval "
                                                                   "(seeded by --seed, default 0)")
    score.add_argument("--allow-failed", type=int, default=0, metavar="N",
                       help="attention checks a listener may fail and still be counted")
    score.set_defaults(handler=_listen_score)


def build_parser() -> Parser:
    common = _common_options()
    parser = Parser(prog="clipsonic", parents=[common], formatter_class=_formatter,
                    description="CLIPSonic: text-to-audio synthesis learned from unlabeled videos through CLIP.")
    parser.add_argument("--version", action="version", version=f"clipsonic {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    _add_demo(commands, common)
    _add_preprocess(commands, common)
    _add_train(commands, common)
    _add_sample(commands, common)
    _add_eval(commands, common)
    _add_listen(commands, common)
    _add_bundle(commands, common)
    _add_weights(commands, common)
    _add_bench(commands, common)
    return parser


def _add_bundle(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    actions = _command_group(commands, "bundle", "make and check a bundle: the models sample and eval load together",
                             "A bundle is a folder of the models `sample --bundle` and `eval --bundle` load (CLIP, "
                             "UNet, optional prior and vocoder) with bundle.json, which records each file's sha256, "
                             "checked at every load.")
    make = actions.add_parser("make", parents=[common], formatter_class=_formatter,
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
    make.set_defaults(handler=_bundle_make)
    check = actions.add_parser("verify", parents=[common], formatter_class=_formatter,
                               help="check a bundle's files against its bundle.json and load its models",
                               description="Hash each file of a bundle against bundle.json, then load every model "
                                           "and check they fit each other. Exit 1 on any difference.")
    check.add_argument("folder", type=Path, nargs="?", help="bundle folder (default: the shipped demo bundle)")
    check.set_defaults(handler=_bundle_verify)


def _bundle_make(args: argparse.Namespace) -> int:
    from clipsonic.bundle import make_bundle

    made = make_bundle(args.out, args.clip, args.unet, prior=args.prior, prior_config=args.prior_config,
                       vocoder=args.vocoder, vocoder_config=args.vocoder_config)
    for role, path in made.files.items():
        print(f"{role:<8} {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"wrote    {made.folder / 'bundle.json'} (sha256 of each file, checked at every load)")
    return 0


def _bundle_verify(args: argparse.Namespace) -> int:
    from clipsonic.bundle import load_models, open_bundle, shipped_bundle

    opened = open_bundle(args.folder or shipped_bundle())
    if not opened.verified:
        raise ClipsonicError(f"{opened.folder}: has no bundle.json, so there is nothing to check its files against "
                             f"(make it with 'clipsonic bundle make')")
    for role, path in opened.files.items():
        print(f"{role:<8} ok  {path}")
    load_models(opened)
    print(f"{opened.folder}: every file matches bundle.json and the models fit each other")
    return 0


def _folders(args: argparse.Namespace) -> list[Path] | None:
    return [folder.expanduser() for folder in args.dir] if args.dir else None


def _weights_list(args: argparse.Namespace) -> int:
    from clipsonic import manifest

    folders = _folders(args)
    entries = manifest.load_manifest()
    width = max(len(name) for name in entries)
    for entry in entries.values():
        path = manifest.locate(entry, folders)
        state = "shipped" if entry.shipped and path else "present" if path else "missing"
        print(f"{entry.name:<{width}}  {entry.kind:<12}  {state:<8}  {path or entry.file}")
        print(f"{'':<{width}}  source:  {entry.source}")
        print(f"{'':<{width}}  licence: {entry.licence}")
    where = ", ".join(str(f) for f in folders or [manifest.user_folder()])
    print(f"\nofficial files are looked for in: {where}")
    return 0


def _weights_verify(args: argparse.Namespace) -> int:
    from clipsonic import manifest

    entries = manifest.load_manifest()
    unknown = [name for name in args.names if name not in entries]
    if unknown:
        raise ClipsonicError(f"unknown weight name(s) {', '.join(unknown)} (see 'clipsonic weights list')")
    chosen = [entries[name] for name in args.names] if args.names else list(entries.values())
    results = [manifest.verify(entry, _folders(args)) for entry in chosen]
    width = max(len(result.entry.name) for result in results)
    for result in results:
        print(f"{result.entry.name:<{width}}  {result.status:<8}  {result.path or '-'}: {result.detail}")
    failures = [r for r in results if r.failed or (args.names and r.status == "missing")]
    if failures:
        raise ClipsonicError(f"{len(failures)} weight file(s) failed verification: "
                             + ", ".join(r.entry.name for r in failures))
    return 0


def _weights_import_clip(args: argparse.Namespace) -> int:
    from clipsonic import clip, manifest
    from clipsonic.checkpoint import verify_reload

    source = args.path
    state, _, layout = clip.read_clip_weights(source)
    model = clip.load_clip(source)
    output = args.output or manifest.user_folder() / f"clip-{source.resolve().name.split('.')[0]}.pt"
    clip.save_clip(output, model)
    verify_reload(model, clip.load_clip(output), output, source)
    config = model.config
    print(f"read      {source} ({layout} layout, {len(state)} tensors)")
    print(f"model     ViT {config.image_resolution}px/{config.vision_patch_size}, vision {config.vision_width}x"
          f"{config.vision_layers}, text {config.text_width}x{config.text_layers}, embed {config.embed_dim}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")
    if source.is_file():
        digest = manifest.sha256_file(source)
        known = [e.name for e in manifest.load_manifest().values() if e.sha256 == digest]
        print(f"sha256    {digest}" + (f" (the official {known[0]})" if known else ""))
    print(f"wrote     {output} (float32; reloads identically)")
    return 0


def _weights_import_prior(args: argparse.Namespace) -> int:
    from clipsonic import manifest, prior
    from clipsonic.checkpoint import verify_reload

    model = prior.load_prior(args.path, args.config)
    output = args.output or manifest.user_folder() / "prior-laion.pt"
    prior.save_prior(output, model)
    verify_reload(model, prior.load_prior(output), output, args.path)
    net = model.config.net
    print(f"read      {args.path} ({model.origin} prior: dim {net.dim}, depth {net.depth}, {net.heads} heads of "
          f"{net.dim_head}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")
    print(f"wrote     {output} (float32; reloads identically)")
    return 0


def _bench_clip(args: argparse.Namespace) -> int:

    from clipsonic import bench, clip

    if args.checkpoint is not None:
        model = clip.load_clip(args.checkpoint)
    else:
        model = clip.CLIP(clip.CLIPConfig.preset(args.preset)).eval()
    if any(batch < 1 for batch in args.batch) or args.repeat < 1:
        args.usage_error("--batch and --repeat must be at least 1")
    log.info("timing CLIP (%s) on %d thread(s)", args.checkpoint or args.preset, _torch_threads())
    rows = bench.bench_clip(model, args.batch, ["fp32", *args.compare], repeat=args.repeat)
    _print_rows(rows, args.json)
    return 0


def _bench_sample(args: argparse.Namespace) -> int:
    from clipsonic import bench

    if args.steps < 2 or args.reference_steps < 6 or args.repeat < 1 or args.seconds <= 0:
        args.usage_error("--steps must be at least 2, --reference-steps at least 6, --repeat at least 1")
    log.info("timing generation (%s UNet, %s CLIP) on %d thread(s)", args.preset, args.clip_preset, _torch_threads())
    rows = bench.bench_sample(args.preset, args.clip_preset, args.seconds, args.steps, args.reference_steps,
                              args.reference_steps if args.full_reference else 5, args.repeat)
    _print_rows(rows, args.json)
    return 0


def _bench_vocoder(args: argparse.Namespace) -> int:
    from clipsonic import bench
    from clipsonic.ops import anti_alias_native

    if args.repeat < 1 or args.seconds <= 0:
        args.usage_error("--repeat must be at least 1 and --seconds positive")
    if anti_alias_native.cpu_module() is None:
        raise ClipsonicError("the C++ anti-aliased activation cannot be built here (see the warning above)")
    _print_rows(bench.bench_vocoder(args.preset, args.seconds, args.repeat), args.json)
    return 0


def _bench_preprocess(args: argparse.Namespace) -> int:
    from clipsonic import bench

    if args.clips < 1 or args.workers < 1 or args.repeat < 1 or args.seconds < 2.05:
        args.usage_error("--clips, --workers and --repeat must be at least 1 and --seconds at least 2.05")
    rows = [row for preset in args.clip_preset
            for row in bench.bench_preprocess(preset, args.clips, args.seconds, args.workers, args.repeat)]
    _print_rows(rows, args.json)
    return 0


def _bench_ops(args: argparse.Namespace) -> int:
    from clipsonic import bench, runtime
    from clipsonic.fileio import write_json_atomic

    if args.repeat < 1 or args.frames < 1 or any(length < 1 for length in args.lengths):
        args.usage_error("--repeat, --frames and --lengths must be at least 1")
    device = runtime.resolve_device(args.device)
    rows = bench.bench_ops(device.type if device.index is None else str(device), args.precisions, args.lengths,
                           unet_preset=None if args.preset == "none" else args.preset, frames=args.frames,
                           repeat=args.repeat)
    print(bench.ops_markdown_table(rows))
    if args.json:
        write_json_atomic(args.json, [row.as_row() for row in rows])
    return 0


def _print_rows(rows, json_path: Path | None) -> None:
    from clipsonic import bench
    from clipsonic.fileio import write_json_atomic

    print(bench.markdown_table(rows))
    if json_path:
        write_json_atomic(json_path, [row.as_row() for row in rows])


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _parameter_count(model) -> str:
    count = sum(p.numel() for p in model.parameters())
    return f"{count / 1e6:.1f} M" if count >= 100_000 else f"{count / 1e3:.1f} k"


def _make_demo_data(args: argparse.Namespace) -> int:
    from clipsonic.demo.synthetic import make_demo_data

    if args.workers < 1:
        args.usage_error("--workers must be at least 1")
    made = make_demo_data(args.out, args.clips_per_class, args.seed if args.seed is not None else 0,
                          (args.min_seconds, args.max_seconds), workers=args.workers,
                          progress=not (args.no_progress or args.quiet))
    print(f"wrote {made.written} clips ({made.skipped} already there) to {made.videos}; labels: {made.labels}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from clipsonic import demo
    from clipsonic.bundle import shipped_bundle

    folder = args.bundle or shipped_bundle()
    progress = not (args.no_progress or args.quiet)
    if args.retrain:
        from clipsonic.demo import DemoRecipe

        recipe = DemoRecipe.preset(args.recipe, **({"seed": args.seed} if args.seed is not None else {}))
        work = args.work or Path.home() / ".cache" / "clipsonic" / "demo-work"
        summary = demo.retrain(work, folder, recipe, workers=args.workers, progress=progress)
        print(f"{folder}: rebuilt in {summary['total_seconds'] / 60:.1f} min")
        gate = summary["quality_gate"]
    elif args.check:
        from clipsonic import runtime
        from clipsonic.demo import DemoRecipe

        recipe = DemoRecipe.from_dict(demo.read_summary(folder)["recipe"])
        pipeline = demo.load_for_gate(folder, recipe, runtime.resolve_device(args.device))
        gate = demo.quality_gate(pipeline, recipe, progress=progress)
        demo.record_gate(folder, gate)
    else:
        summary = demo.read_summary(folder)
        print(f"{folder}: demo bundle, recipe {json.dumps(summary['recipe'])}")
        print(f"built in {summary['total_seconds'] / 60:.1f} min on {summary['threads']} thread(s)")
        gate = summary["quality_gate"]
    print(demo.gate_table(gate))
    print(f"quality gate (SD and IQ at least 80% of each class): {'passed' if gate['passed'] else 'FAILED'}")
    if not gate["passed"]:
        raise ClipsonicError(f"{folder}: the demo bundle fails its quality gate")
    return 0


def _preprocess(args: argparse.Namespace) -> int:
    from clipsonic import manifest, runtime
    from clipsonic.clip import load_clip
    from clipsonic.data.labels import read_labels
    from clipsonic.data.preprocess import PreprocessConfig, Ranks, preprocess

    settings = PreprocessConfig(frames_per_second=args.frames_per_second, min_frames=args.min_frames,
                                min_seconds=args.min_seconds, keep_frames=args.keep_frames,
                                split_ratio=args.split_ratio, split_seed=args.seed if args.seed is not None else 0,
                                encode_batch=args.batch, shard_clips=args.shard_clips)
    if not args.videos.is_dir():
        raise ClipsonicError(f"{args.videos}: not a folder")
    ranks = Ranks.from_environment()
    workers = args.workers if args.workers is not None else \
        max(1, min(4, (os.cpu_count() or 1) // max(1, ranks.local_world)))
    labels = read_labels(args.labels) if args.labels is not None else None
    checkpoint = args.clip or manifest.locate(manifest.load_manifest()["clip-vit-l-14"])
    if checkpoint is None:
        raise ClipsonicError(f"no CLIP checkpoint: pass --clip, or put ViT-L-14.pt in {manifest.user_folder()} "
                             f"(see 'clipsonic weights list')")
    device = runtime.resolve_device(args.device)
    if device.type == "cuda" and ranks.world > 1:
        import torch

        device = torch.device("cuda", ranks.local_rank)  # one GPU per rank on each node
    clip = load_clip(checkpoint, dtype=runtime.resolve_dtype(args.dtype, device), device=device)
    summary = preprocess(args.videos, args.out, clip, labels=labels, settings=settings, workers=workers,
                         clip_checkpoint=checkpoint, retry_skipped=args.retry_skipped,
                         progress=not (args.no_progress or args.quiet), allow_unlabelled=args.allow_unlabelled,
                         add_source=args.add_source, ranks=ranks)
    if ranks.rank != 0:
        return 0
    unusable = f", {summary.unusable} audio-only or broken" if summary.unusable else ""
    print(f"{args.out}: {summary.added} clip(s) added, {summary.already_done} already there, "
          f"{summary.skipped} skipped{unusable} (see {args.out / 'skipped.csv'})"
          + (f", {summary.skipped_before} skipped before" if summary.skipped_before else "")
          + (f", {summary.relabelled} relabelled" if summary.relabelled else "")
          + (f"; {summary.clips_per_second:.2f} clips/s" if summary.added + summary.skipped else "")
          + (f" on {ranks.world} ranks" if ranks.world > 1 else ""))
    if summary.labels is not None:
        print(f"labels: {summary.labels.describe()}")
    if summary.ignored:
        log.info("%d other file(s) below %s are not media and were left alone (e.g. labels, notes)", summary.ignored,
                 args.videos)
    return 0


def _train(args: argparse.Namespace) -> int:
    from clipsonic.checkpoint import load_checkpoint
    from clipsonic.data import Dataset
    from clipsonic.train_diffusion import DiffusionTask, DiffusionTrainingConfig
    from clipsonic.trainloop import CHECKPOINT_NAME, train
    from clipsonic.unet import MelNormalization, UNetConfig

    if args.crop_frames < 1:
        args.usage_error("--crop-frames must be at least 1")
    if not 0 <= args.cond_drop < 1:
        args.usage_error("--cond-drop must be in [0, 1)")
    config, device = _loop_config(args)
    settings = DiffusionTrainingConfig(crop_frames=args.crop_frames, cond_drop=args.cond_drop, text_cond=args.text_cond)
    unet_config, mel_norm = UNetConfig.preset(args.preset), None
    if args.resume and (args.out / CHECKPOINT_NAME).is_file():
        saved = load_checkpoint(args.out / CHECKPOINT_NAME, "unet")
        if saved["extra"].get("training") != settings.to_dict():
            raise ClipsonicError(f"{args.out / CHECKPOINT_NAME}: was trained with other --crop-frames/--cond-drop/"
                                 f"--text-cond settings")
        unet_config = UNetConfig.from_dict(saved["config"])
        mel_norm = MelNormalization.from_dict(saved["extra"]["mel_norm"])
    task = DiffusionTask(Dataset(args.dataset, split="train"), unet_config, settings, mel_norm)
    log.info("training a %s-parameter UNet on %d clips of %s", _parameter_count(task.model), len(task.records),
             args.dataset)
    path = train(task, config, args.out, resume=args.resume, device=device, progress=not args.no_progress)
    log.info("done: %s", path)
    return 0


def _loop_config(args: argparse.Namespace, **settings):
    """The TrainConfig and device that the trainers' options describe (`settings` override)."""
    from clipsonic import runtime
    from clipsonic.trainloop import TrainConfig

    for name in ("steps", "batch_size", "save_every", "log_every"):
        if getattr(args, name) < 1:
            args.usage_error(f"--{name.replace('_', '-')} must be at least 1")
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         ema_decay=args.ema, grad_clip=args.grad_clip, bf16=args.bf16 or args.dtype == "bf16",
                         save_every=args.save_every, keep=args.keep, log_every=args.log_every,
                         seed=args.seed if args.seed is not None else 0, **settings)
    return config, runtime.resolve_device(args.device)


def _train_vocoder(args: argparse.Namespace) -> int:
    from clipsonic.checkpoint import load_checkpoint
    from clipsonic.train_vocoder import VocoderTask, VocoderTrainingConfig
    from clipsonic.trainloop import CHECKPOINT_NAME, train
    from clipsonic.vocoder import BigVGANConfig

    if args.segment_samples < 1 or args.discriminator_width < 1 or args.validate_every < 1:
        args.usage_error("--segment-samples, --discriminator-width and --validate-every must be at least 1")
    if not 0 < args.lr_decay <= 1:
        args.usage_error("--lr-decay must be in (0, 1]")
    if not args.audio.is_dir():
        raise ClipsonicError(f"{args.audio}: not a folder")
    config, device = _loop_config(args, betas=(0.8, 0.99), lr_decay=args.lr_decay, validate_every=args.validate_every)
    model_config = BigVGANConfig.preset(args.preset)
    settings = VocoderTrainingConfig(segment_samples=args.segment_samples, discriminator_width=args.discriminator_width)
    if args.resume and (args.out / CHECKPOINT_NAME).is_file():
        saved = load_checkpoint(args.out / CHECKPOINT_NAME, "bigvgan")
        model_config = BigVGANConfig.from_dict(saved["config"])
        settings = VocoderTrainingConfig.from_dict(saved["extra"]["training"])
    task = VocoderTask(args.audio, model_config, settings)
    log.info("training a %s-parameter BigVGAN on %.1f s of audio from %s", _parameter_count(task.model),
             task.training_audio.numel() / model_config.sampling_rate, args.audio)
    path = train(task, config, args.out, resume=args.resume, device=device, progress=not args.no_progress)
    log.info("done: %s", path)
    return 0


def _train_prior(args: argparse.Namespace) -> int:
    from clipsonic.checkpoint import load_checkpoint
    from clipsonic.data import Dataset
    from clipsonic.prior import PriorConfig
    from clipsonic.train_prior import PriorTask
    from clipsonic.trainloop import CHECKPOINT_NAME, train

    if not 0 <= args.text_drop < 1:
        args.usage_error("--text-drop must be in [0, 1)")
    config, device = _loop_config(args)
    prior_config = PriorConfig.preset(args.preset, cond_drop_prob=args.text_drop)
    if args.depth is not None:
        if args.depth < 1:
            args.usage_error("--depth must be at least 1")
        prior_config = prior_config.replace(net=prior_config.net.replace(depth=args.depth))
    if args.resume and (args.out / CHECKPOINT_NAME).is_file():
        prior_config = PriorConfig.from_dict(load_checkpoint(args.out / CHECKPOINT_NAME, "prior")["config"])
    task = PriorTask(Dataset(args.dataset, split="train"), prior_config)
    log.info("training a %s-parameter prior on %d labelled clips of %s", _parameter_count(task.model),
             len(task.records), args.dataset)
    path = train(task, config, args.out, resume=args.resume, device=device, progress=not args.no_progress)
    log.info("done: %s", path)
    return 0


def _check_settings(args: argparse.Namespace, process_steps: int | None = None,
                    guidance: Sequence[float] | None = None) -> None:
    """Generation settings as usage errors naming their flag (before any work, and again against
    the loaded model's diffusion length)."""
    from clipsonic.pipeline import SettingError, check_settings

    try:
        for weight in guidance or [args.guidance]:
            check_settings(weight, args.sampler, args.steps, args.seconds, args.seed, args.batch, process_steps)
    except SettingError as error:
        flag = "--guidance-sweep" if guidance and error.parameter == "guidance" else f"--{error.parameter}"
        args.usage_error(f"{flag} {error.value}: {error.message}")


def _output_paths(args: argparse.Namespace) -> list[Path]:
    """The files `sample` will write, checked before any work: suffix, not a folder, and a folder
    that exists (or can be made) where a file can be created."""
    output = args.output
    if output.suffix.lower() not in (".wav", ".flac"):
        args.usage_error(f"-o {output}: the file must end in .wav or .flac")
    outputs = [output] if args.batch == 1 else [
        output.with_name(f"{output.stem}_{index}{output.suffix}") for index in range(args.batch)]
    for path in (outputs[0], outputs[-1]):
        if path.is_dir():
            args.usage_error(f"-o {output}: {path} is a folder")
    existing = output.parent if str(output.parent) else Path(".")
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is not a folder"
    else:
        import tempfile

        try:  # permissions alone do not tell (root in /proc, a read-only mount): create a file
            handle, probe = tempfile.mkstemp(prefix=".clipsonic-probe.", dir=existing)
            os.close(handle)
            os.unlink(probe)
        except OSError as error:
            problem = f"cannot create files in {existing} ({error.strerror})"
    if problem:
        args.usage_error(f"-o {output}: {problem}")
    return outputs


def _sample(args: argparse.Namespace) -> int:
    import numpy as np

    from clipsonic import runtime
    from clipsonic.audio import playable, save_audio
    from clipsonic.pipeline import NonFiniteOutput, Pipeline, fresh_seed

    if args.text is not None and not args.text.strip():
        args.usage_error("--text is empty")
    if args.variant is not None and (VARIANTS[args.variant].query == IMAGE) != (args.image is not None):
        args.usage_error(f"--variant {args.variant} needs {'--image' if args.image is None else '--text'}")
    _check_settings(args)
    if args.loudness is not None and not (math.isfinite(args.loudness) and -70 <= args.loudness <= 0):
        args.usage_error(f"--loudness {args.loudness}: must be between -70 and 0 LUFS (e.g. -23, -16 or -14)")
    if args.loudness is not None and args.seconds < 0.4:
        args.usage_error(f"--loudness needs --seconds of at least 0.4 (BS.1770 measures 400-ms blocks), "
                         f"not {args.seconds:g}")
    outputs = _output_paths(args)
    image = None
    if args.image is not None:
        from clipsonic.media import read_image

        image = read_image(args.image)
    device = runtime.resolve_device(args.device)
    dtype, why = _generation_dtype(args, device)
    pipeline = Pipeline.load(args.bundle, clip=args.clip, checkpoint=args.checkpoint, prior=args.prior,
                             prior_config=args.prior_config, vocoder=args.vocoder, vocoder_config=args.vocoder_config,
                             device=device, dtype=dtype)
    _check_settings(args, pipeline.spectrogram.diffusion_steps)
    if why:
        log.info("%s", why)
    variant = args.variant or pipeline.default_variant(image)
    seed = args.seed if args.seed is not None else fresh_seed()
    chunk = pipeline.chunk_size(args.seconds)
    chunks = -(-args.batch // chunk)
    if chunks > 1:
        log.info("--batch %d: generating %d chunks of up to %d samples, each written when done", args.batch, chunks,
                 chunk)
    bar = None if args.quiet else _LazyBar(total=args.steps * chunks, unit="step", desc=args.sampler)
    sample_rate = pipeline.spectrogram.mel_config.sample_rate
    written, scaled = [], []
    try:
        for part in pipeline.generate_chunks(text=args.text, image=image, variant=variant, guidance=args.guidance,
                                             sampler=args.sampler, steps=args.steps, seconds=args.seconds, seed=seed,
                                             batch=args.batch, progress=bar.update if bar else None):
            for offset, (wav, spectrogram) in enumerate(zip(part.wav, part.mel)):
                path = outputs[part.start + offset]
                wav, change = playable(wav, sample_rate, args.loudness)
                if change.peak_gain_db < 0:
                    scaled.append((path.name, change))
                save_audio(path, wav, sample_rate)
                written.append(path)
                if args.save_mel:
                    from clipsonic.fileio import atomic_path

                    with atomic_path(path.with_suffix(".npy")) as tmp:
                        np.save(tmp, spectrogram.cpu().numpy())
                    written.append(path.with_suffix(".npy"))
    except NonFiniteOutput:
        for path in written:  # no file of a batch that went wrong is kept
            path.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    for path in written:
        if path.suffix != ".npy":
            print(path)
    if scaled:
        _report_scaled(scaled, len(outputs))
    log.info("variant %s, seed %d, %s x %d steps, guidance %g, %s", variant, seed, args.sampler, args.steps,
             args.guidance, str(dtype).removeprefix("torch."))
    return 0


class _LazyBar:
    """A tqdm bar that appears at the first step, so that messages and errors from what comes
    before (loading, the text encoder, the prior) are not printed under an empty bar."""

    def __init__(self, **settings) -> None:
        self.settings, self.bar = settings, None

    def update(self, steps: int = 1) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(dynamic_ncols=True, **self.settings)
        self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _report_scaled(scaled: list, total: int) -> None:
    """One line for the files the peak guard scaled down."""
    from clipsonic.audio import PEAK_CEILING_DBFS

    worst = max(change.peak for _, change in scaled)
    if total == 1:
        subject, gains = f"{scaled[0][0]} would clip", f"{scaled[0][1].peak_gain_db:+.1f} dB"
    else:
        more = f" and {len(scaled) - 4} more" if len(scaled) > 4 else ""
        subject = f"{len(scaled)} of {total} files would clip"
        gains = ", ".join(f"{name} {change.peak_gain_db:+.1f} dB" for name, change in scaled[:4]) + more
    log.info("%s (peak %.2f = %+.1f dBFS): scaled to peak at %g dBFS (%s); --loudness LUFS normalises instead",
             subject, worst, 20 * math.log10(worst), PEAK_CEILING_DBFS, gains)


def _generation_dtype(args: argparse.Namespace, device):
    """(torch dtype, the line to log) for a generating command: with ``auto``, the line says what
    was picked and why; with an explicit --dtype there is nothing to say."""
    from clipsonic import runtime

    if args.dtype != runtime.AUTO:
        return runtime.resolve_dtype(args.dtype), None
    name, why = runtime.auto_dtype(device)
    hint = "; --dtype fp32 for full precision" if name != "fp32" else ""
    return runtime.resolve_dtype(name), f"precision {name} ({why}{hint})"


def _eval(args: argparse.Namespace) -> int:
    from clipsonic import runtime
    from clipsonic.data import Dataset
    from clipsonic.eval.evaluate import EvalConfig, Evaluator, evaluate, vggish_path
    from clipsonic.variants import PRIOR_KINDS
    from clipsonic.pipeline import Pipeline
    from clipsonic.vggish import load_vggish

    weights = [args.guidance] if args.guidance_sweep is None else _floats(args, args.guidance_sweep, "--guidance-sweep")
    _check_settings(args, guidance=weights)
    if args.samples < 1:
        args.usage_error(f"--samples {args.samples}: must be at least 1")
    config = EvalConfig(samples=args.samples, guidance=tuple(weights), sampler=args.sampler, steps=args.steps,
                        seconds=args.seconds, batch=args.batch, seed=args.seed if args.seed is not None else 0)
    dataset = Dataset(args.dataset, split="test")
    device = runtime.resolve_device(args.device)
    dtype = runtime.resolve_dtype(args.dtype, device)
    vggish = load_vggish(vggish_path(args.vggish), dtype=dtype, device=device)
    pipeline = Pipeline.load(args.bundle, clip=args.clip, checkpoint=args.checkpoint, prior=args.prior,
                             prior_config=args.prior_config, vocoder=args.vocoder, vocoder_config=args.vocoder_config,
                             device=device, dtype=dtype)
    _check_settings(args, pipeline.spectrogram.diffusion_steps, weights)
    tta = None
    if args.tta_checkpoint is not None:
        from clipsonic.unet import load_unet

        tta = load_unet(args.tta_checkpoint, dtype=dtype, device=device)
        if tta.condition != "text":
            raise ClipsonicError(f"--tta-checkpoint {args.tta_checkpoint}: not trained with --text-cond")
    evaluator = Evaluator(pipeline, dataset, vggish, config, tta=tta)
    available = evaluator.available_variants()
    variants = available if args.variants is None else [v.strip() for v in args.variants.split(",") if v.strip()]
    for variant in variants:
        if variant not in VARIANTS:
            args.usage_error(f"--variants: unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")
        if variant not in available:
            chosen = VARIANTS[variant]
            needs = f"{PRIOR_KINDS[chosen.prior]} (--prior)" if chosen.prior else \
                f"a UNet trained on {chosen.trained_on} embeddings (--tta-checkpoint, from train --text-cond)"
            args.usage_error(f"--variants: {variant} needs {needs}")
    bar = None
    if not (args.no_progress or args.quiet):
        from tqdm import tqdm

        bar = tqdm(total=config.samples * len(variants) * len(weights), unit="sample", desc="eval", dynamic_ncols=True)
        evaluator.progress = bar.update
    try:
        summary = evaluate(evaluator, variants, args.out, save_audio=args.save_audio,
                           reconstruction=not args.no_reconstruction)
    finally:
        if bar is not None:
            bar.close()
    print((args.out / "table1.md").read_text(encoding="utf-8"))
    print((args.out / "table2.md").read_text(encoding="utf-8"))
    if len(weights) > 1:
        print((args.out / "sweep.md").read_text(encoding="utf-8"))
    log.info("results in %s (summary.json, %d FAD values)", args.out, len(summary["fad"]))
    return 0


def _floats(args: argparse.Namespace, text: str, option: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        args.usage_error(f"{option} {text}: expected comma-separated numbers, e.g. 1,1.5,2,3")
    if not values:
        args.usage_error(f"{option}: no values given")
    return values


def _eval_fad(args: argparse.Namespace) -> int:
    from clipsonic.eval.evaluate import folder_statistics, vggish_path
    from clipsonic.metrics import frechet_distance_from_statistics, save_statistics
    from clipsonic.runtime import resolve_device, resolve_dtype
    from clipsonic.vggish import load_vggish

    device = resolve_device(args.device)
    vggish = load_vggish(vggish_path(args.vggish), dtype=resolve_dtype(args.dtype, device), device=device)
    (stats_a, files_a), (stats_b, files_b) = folder_statistics(args.a, vggish), folder_statistics(args.b, vggish)
    if args.save_stats is not None:
        for name, stats in (("A", stats_a), ("B", stats_b)):
            save_statistics(args.save_stats / f"{name}.npz", *stats)
    value = frechet_distance_from_statistics(*stats_a, *stats_b)
    print(f"FAD {value:.6f}  ({args.a}: {files_a or 'statistics'} file(s), {args.b}: {files_b or 'statistics'} file(s))")
    return 0


def _named_folder(args: argparse.Namespace, text: str, option: str,
                  default_name: str | None = None) -> tuple[str, Path]:
    """NAME=FOLDER (or FOLDER alone when a default name exists) as (name, folder)."""
    name, separator, folder = text.partition("=")
    if not separator:
        name, folder = default_name, text
    name = (name or "").strip()
    if not name or not folder:
        args.usage_error(f"{option} {text}: expected NAME=FOLDER")
    return name, Path(folder).expanduser()


def _listen_make(args: argparse.Namespace) -> int:
    from clipsonic.listen import ListeningTest

    systems: dict[str, Path] = {}
    for text in args.system:
        name, folder = _named_folder(args, text, "--system")
        if name in systems:
            args.usage_error(f"--system {text}: the name {name!r} is given twice")
        systems[name] = folder
    reference = None if args.reference is None else _named_folder(args, args.reference, "--reference", "ground truth")
    if reference is not None and reference[0] in systems:
        args.usage_error(f"--reference {args.reference}: {reference[0]!r} is also a --system name")
    if args.per_listener is not None and args.per_listener < 1:
        args.usage_error(f"--per-listener {args.per_listener}: must be at least 1")
    if args.checks < 0:
        args.usage_error(f"--checks {args.checks}: must be at least 0")
    test = ListeningTest.from_folders(systems, reference, args.prompts)
    if args.per_listener is not None and args.per_listener > len(test.prompts):
        args.usage_error(f"--per-listener {args.per_listener}: there are only {len(test.prompts)} prompts")
    definition = test.write(args.out, per_listener=args.per_listener, checks=args.checks,
                            seed=args.seed if args.seed is not None else 0, title=args.title)
    checks = (f"{definition['checks']} anchor and {definition['checks']} repeat check(s) from "
              f"{definition['check_source']!r}" if definition["checks"] else "no attention checks")
    print(f"{args.out / 'index.html'}: test {definition['test_id']}, {len(test.prompts)} prompt(s) x "
          f"{len(test.systems)} system(s), {definition['per_listener']} trial(s) per listener, {checks}")
    return 0


def _listen_score(args: argparse.Namespace) -> int:
    from clipsonic.listen import markdown, read_results, score, write_scores

    if args.bootstrap < 1:
        args.usage_error(f"--bootstrap {args.bootstrap}: must be at least 1")
    if args.allow_failed < 0:
        args.usage_error(f"--allow-failed {args.allow_failed}: must be at least 0")
    scores = score(read_results(args.results), draws=args.bootstrap, seed=args.seed if args.seed is not None else 0,
                   allow_failed=args.allow_failed)
    excluded = scores.excluded
    log.info("%d of %d listener(s) left out%s", len(excluded), len(scores.listeners),
             ":" if excluded else "")
    for listener in excluded:
        log.info("  %s (%s): %s", listener.id, listener.path.name, listener.reason)
    write_scores(scores, args.out)
    print(markdown(scores), end="")
    log.info("results in %s (mos.md, mos.csv, listeners.csv, mos.png)", args.out)
    return 0


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    if int(os.environ.get("RANK", "0")) != 0:
        level = logging.WARNING  # under torchrun only rank 0 reports progress
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def _apply_runtime(args: argparse.Namespace) -> None:
    from clipsonic import runtime

    if not runtime.DEVICE_PATTERN.match(args.device):
        args.usage_error(f"--device {args.device}: expected auto, cpu, cuda, cuda:N or mps")
    if args.threads is not None:
        if args.threads < 1:
            args.usage_error(f"--threads {args.threads}: must be at least 1")
        runtime.set_threads(args.threads)
    if args.seed is not None:
        runtime.seed_everything(args.seed)


def run() -> None:
    """The console script and `python -m clipsonic`: `main`, then exit.

    After a command marked `quick_exit` (sample: its whole budget is a few seconds) returns,
    the process ends with os._exit once output is flushed: interpreter shutdown with torch
    loaded takes about 0.5 s on a 2-core CPU (tearing down torch's modules), and there is nothing
    left to do by then: files are written atomically and closed, and no child process is alive.
    """
    args_seen: dict = {}
    code = main(parsed=args_seen)
    if args_seen.get("quick_exit"):
        import multiprocessing

        if not multiprocessing.active_children():
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    sys.exit(code)


def main(argv: Sequence[str] | None = None, parsed: dict | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    position = next((i for i, word in enumerate(argv) if not word.startswith("-")), None)
    if position is not None and argv[position:position + 2] == ["eval", "fad"]:
        argv[position:position + 2] = ["eval-fad"]
    args = parser.parse_args(argv)
    for name, value in COMMON_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, getattr(args, f"default_{name}", value))
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
    if parsed is not None:
        parsed.update(vars(args))
    _configure_logging(args)
    try:
        _apply_runtime(args)
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("clipsonic: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: stop quietly, and keep Python's exit-time
        # flush of stdout from failing a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except ClipsonicError as error:
        if args.debug:
            raise
        message = error.for_cli() if isinstance(error, ParameterError) else str(error)
        print(f"clipsonic: error: {message}", file=sys.stderr)
        return 130 if isinstance(error, Interrupted) else 1
    except Exception as error:  # an unexpected failure still gets one line unless --debug
        if args.debug:
            raise
        print(f"clipsonic: error: {type(error).__name__}: {error} (run again with --debug for the traceback)",
              file=sys.stderr)
        return 1
