"""The `clipsonic` command: a thin argparse shell over the library.

Heavy imports happen inside each command. A user error prints one line on stderr and exits
with 2 (usage) or 1 (failure); a traceback appears only with --debug. Library code never
imports this module.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from clipsonic import __version__
from clipsonic.errors import ClipsonicError

log = logging.getLogger("clipsonic")

COMMON_DEFAULTS = {"device": "auto", "dtype": "fp32", "seed": None, "threads": None,
                   "verbose": 0, "quiet": False, "debug": False}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line."""

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


def _common_options() -> argparse.ArgumentParser:
    """Options every command takes, before or after the command name.

    Defaults are suppressed here and filled in after parsing, so a value given before the
    command is not overwritten by the subcommand's default.
    """
    common = Parser(add_help=False, argument_default=argparse.SUPPRESS)
    group = common.add_argument_group("common options")
    group.add_argument("--device", metavar="DEV",
                       help="auto, cpu, cuda, cuda:N or mps (default: auto = CUDA when present)")
    group.add_argument("--dtype", choices=["fp32", "bf16", "fp16"],
                       help="compute precision of the models (default: fp32)")
    group.add_argument("--seed", type=int, help="random seed for a reproducible run (default: none)")
    group.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    group.add_argument("-v", "--verbose", action="count", help="more log output (repeatable)")
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    group.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return common


def _add_weights(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    weights = commands.add_parser("weights", help="list and verify model weight files",
                                  description="List and verify the weight files named in the manifest.",
                                  formatter_class=_formatter)
    actions = weights.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
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
    bench = commands.add_parser("bench", help="time our fast paths against their references",
                                description="Time our fast paths against a reference measured in the same run; "
                                            "prints a Markdown table (ratio > 1 means ours is faster).",
                                formatter_class=_formatter)
    targets = bench.add_subparsers(dest="bench_target", metavar="TARGET", required=True)
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


def _add_sample(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    sample = commands.add_parser("sample", parents=[common], formatter_class=_formatter,
                                 help="generate audio from a text or an image",
                                 description="Generate audio from a text (ZS: its CLIP text embedding) or an "
                                             "image (IQ: its CLIP image embedding) with a trained UNet; "
                                             "BigVGAN (--vocoder) or Griffin-Lim turns the mel into a waveform.")
    query = sample.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help='text query, e.g. "a photo of rain"')
    query.add_argument("--image", type=Path, help="image query (png, jpg, webp, ...)")
    sample.add_argument("--variant", choices=["iq", "zs", "pd", "sd"],
                        help="iq: image embedding; zs: text embedding; pd/sd: image embedding drawn from the text by "
                             "LAION's prior / a prior from train-prior (default: iq for --image; for --text sd or pd "
                             "when --prior is given, else zs)")
    sample.add_argument("--checkpoint", type=Path, help="UNet checkpoint from `clipsonic train`")
    sample.add_argument("--clip", type=Path, help="the CLIP checkpoint the UNet was trained with")
    sample.add_argument("--prior", type=Path, help="diffusion prior checkpoint (ours, or LAION's latest.pth)")
    sample.add_argument("--prior-config", type=Path, help="LAION's prior_config.json (default: beside --prior)")
    sample.add_argument("--vocoder", type=Path, help="BigVGAN checkpoint (ours, or NVIDIA's bigvgan_generator.pt); "
                                                     "default: Griffin-Lim")
    sample.add_argument("--vocoder-config", type=Path, help="NVIDIA's config.json (default: beside --vocoder)")
    sample.add_argument("--bundle", type=Path, help="a folder holding clip.pt, unet.pt (and prior.pt, vocoder.pt) instead")
    sample.add_argument("--guidance", type=float, default=1.5, help="classifier-free guidance weight w")
    sample.add_argument("--sampler", choices=["ddpm", "ddim", "dpm++"], default="dpm++", help="sampler")
    sample.add_argument("--steps", type=int, default=25, help="sampling steps (the paper: ddpm with 1000)")
    sample.add_argument("--seconds", type=float, default=4.0, help="length of the audio")
    sample.add_argument("--batch", type=int, default=1, help="number of files to generate")
    sample.add_argument("-o", "--output", type=Path, required=True, help="output .wav or .flac "
                                                                          "(NAME_0, NAME_1, ... with --batch)")
    sample.add_argument("--save-mel", action="store_true", help="also save each log-mel as .npy beside the audio")
    sample.set_defaults(handler=_sample)


def build_parser() -> Parser:
    common = _common_options()
    parser = Parser(prog="clipsonic", parents=[common], formatter_class=_formatter,
                    description="CLIPSonic: text-to-audio synthesis learned from unlabeled videos through CLIP.")
    parser.add_argument("--version", action="version", version=f"clipsonic {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    _add_train(commands, common)
    _add_sample(commands, common)
    _add_weights(commands, common)
    _add_bench(commands, common)
    return parser


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
        print(f"{result.entry.name:<{width}}  {result.status:<8}  {result.detail}")
    failures = [r for r in results if r.failed or (args.names and r.status == "missing")]
    if failures:
        raise ClipsonicError(f"{len(failures)} weight file(s) failed verification: "
                             + ", ".join(r.entry.name for r in failures))
    return 0


def _weights_import_clip(args: argparse.Namespace) -> int:
    from clipsonic import clip, manifest

    source = args.path
    state, _, layout = clip.read_clip_weights(source)
    model = clip.load_clip(source)
    output = args.output or manifest.user_folder() / f"clip-{source.resolve().name.split('.')[0]}.pt"
    clip.save_clip(output, model)
    _verify_copy(model, clip.load_clip(output), output, source)
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

    model = prior.load_prior(args.path, args.config)
    output = args.output or manifest.user_folder() / "prior-laion.pt"
    prior.save_prior(output, model)
    _verify_copy(model, prior.load_prior(output), output, args.path)
    net = model.config.net
    print(f"read      {args.path} ({model.origin} prior: dim {net.dim}, depth {net.depth}, {net.heads} heads of "
          f"{net.dim_head}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")
    print(f"wrote     {output} (float32; reloads identically)")
    return 0


def _verify_copy(model, copy, output: Path, source: Path) -> None:
    """Every tensor of the reloaded `copy` must equal the converted model's, dtype included."""
    import torch

    written = copy.state_dict()
    for name, tensor in model.state_dict().items():
        theirs = written.get(name)
        if theirs is None or theirs.dtype != tensor.dtype or not torch.equal(theirs, tensor):
            raise ClipsonicError(f"{output}: verification failed: {name} differs from {source}")


def _bench_clip(args: argparse.Namespace) -> int:
    import json

    from clipsonic import bench, clip

    if args.checkpoint is not None:
        model = clip.load_clip(args.checkpoint)
    else:
        model = clip.CLIP(clip.CLIPConfig.preset(args.preset)).eval()
    if any(batch < 1 for batch in args.batch) or args.repeat < 1:
        raise ClipsonicError("--batch and --repeat must be at least 1")
    log.info("timing CLIP (%s) on %d thread(s)", args.checkpoint or args.preset, _torch_threads())
    rows = bench.bench_clip(model, args.batch, ["fp32", *args.compare], repeat=args.repeat)
    _print_rows(rows, args.json)
    return 0


def _bench_sample(args: argparse.Namespace) -> int:
    from clipsonic import bench

    if args.steps < 2 or args.reference_steps < 6 or args.repeat < 1 or args.seconds <= 0:
        raise ClipsonicError("--steps must be at least 2, --reference-steps at least 6, --repeat at least 1")
    log.info("timing generation (%s UNet, %s CLIP) on %d thread(s)", args.preset, args.clip_preset, _torch_threads())
    rows = bench.bench_sample(args.preset, args.clip_preset, args.seconds, args.steps, args.reference_steps,
                              args.reference_steps if args.full_reference else 5, args.repeat)
    _print_rows(rows, args.json)
    return 0


def _bench_vocoder(args: argparse.Namespace) -> int:
    from clipsonic import bench
    from clipsonic.ops import anti_alias_native

    if args.repeat < 1 or args.seconds <= 0:
        raise ClipsonicError("--repeat must be at least 1 and --seconds positive")
    if anti_alias_native.cpu_module() is None:
        raise ClipsonicError("the C++ anti-aliased activation cannot be built here (see the warning above)")
    _print_rows(bench.bench_vocoder(args.preset, args.seconds, args.repeat), args.json)
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


def _train(args: argparse.Namespace) -> int:
    from clipsonic.checkpoint import load_checkpoint
    from clipsonic.data import Dataset
    from clipsonic.train_diffusion import DiffusionTask, DiffusionTrainingConfig
    from clipsonic.trainloop import CHECKPOINT_NAME, train
    from clipsonic.unet import MelNormalization, UNetConfig

    if args.crop_frames < 1:
        raise ClipsonicError("--crop-frames must be at least 1")
    if not 0 <= args.cond_drop < 1:
        raise ClipsonicError("--cond-drop must be in [0, 1)")
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
    log.info("training a %.1f M-parameter UNet on %d clips of %s", sum(p.numel() for p in task.model.parameters())
             / 1e6, len(task.records), args.dataset)
    path = train(task, config, args.out, resume=args.resume, device=device, progress=not args.no_progress)
    log.info("done: %s", path)
    return 0


def _loop_config(args: argparse.Namespace, **settings):
    """The TrainConfig and device that the trainers' options describe (`settings` override)."""
    from clipsonic import runtime
    from clipsonic.trainloop import TrainConfig

    for name in ("steps", "batch_size", "save_every", "log_every"):
        if getattr(args, name) < 1:
            raise ClipsonicError(f"--{name.replace('_', '-')} must be at least 1")
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
        raise ClipsonicError("--segment-samples, --discriminator-width and --validate-every must be at least 1")
    if not 0 < args.lr_decay <= 1:
        raise ClipsonicError("--lr-decay must be in (0, 1]")
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
    log.info("training a %.1f M-parameter BigVGAN on %.1f s of audio from %s",
             sum(p.numel() for p in task.model.parameters()) / 1e6,
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
        raise ClipsonicError("--text-drop must be in [0, 1)")
    config, device = _loop_config(args)
    prior_config = PriorConfig.preset(args.preset, cond_drop_prob=args.text_drop)
    if args.depth is not None:
        if args.depth < 1:
            raise ClipsonicError("--depth must be at least 1")
        prior_config = prior_config.replace(net=prior_config.net.replace(depth=args.depth))
    if args.resume and (args.out / CHECKPOINT_NAME).is_file():
        prior_config = PriorConfig.from_dict(load_checkpoint(args.out / CHECKPOINT_NAME, "prior")["config"])
    task = PriorTask(Dataset(args.dataset, split="train"), prior_config)
    log.info("training a %.1f M-parameter prior on %d labelled clips of %s",
             sum(p.numel() for p in task.model.parameters()) / 1e6, len(task.records), args.dataset)
    path = train(task, config, args.out, resume=args.resume, device=device, progress=not args.no_progress)
    log.info("done: %s", path)
    return 0


def _sample(args: argparse.Namespace) -> int:
    import numpy as np

    from clipsonic import runtime
    from clipsonic.audio import save_audio
    from clipsonic.pipeline import Pipeline

    if args.text is not None and not args.text.strip():
        raise ClipsonicError("--text is empty")
    if args.steps < 1 or args.batch < 1 or args.seconds <= 0:
        raise ClipsonicError("--steps and --batch must be at least 1 and --seconds positive")
    if args.output.suffix.lower() not in (".wav", ".flac"):
        raise ClipsonicError(f"-o {args.output}: the file must end in .wav or .flac")
    image = None
    if args.image is not None:
        from clipsonic.media import read_image

        image = read_image(args.image)
    device, dtype = runtime.resolve_device(args.device), runtime.resolve_dtype(args.dtype)
    pipeline = Pipeline.load(args.bundle, clip=args.clip, checkpoint=args.checkpoint, prior=args.prior,
                             prior_config=args.prior_config, vocoder=args.vocoder, vocoder_config=args.vocoder_config,
                             device=device, dtype=dtype)
    variant = args.variant or pipeline.default_variant(image)
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**31)
    query = pipeline.query(text=args.text, image=image, variant=variant, seed=seed)
    mel = pipeline.generate_mel(query, args.guidance, args.sampler, args.steps, args.seconds, seed, args.batch,
                                progress=not args.quiet)
    wavs = pipeline.vocode(mel, args.seconds, seed=seed)
    outputs = [args.output] if args.batch == 1 else [
        args.output.with_name(f"{args.output.stem}_{index}{args.output.suffix}") for index in range(args.batch)]
    for path, wav, spectrogram in zip(outputs, wavs, mel):
        save_audio(path, wav, pipeline.spectrogram.mel_config.sample_rate)
        if args.save_mel:
            from clipsonic.fileio import atomic_path

            with atomic_path(path.with_suffix(".npy")) as tmp:
                np.save(tmp, spectrogram.cpu().numpy())
        print(path)
    log.info("variant %s, seed %d, %s x %d steps, guidance %g", variant, seed, args.sampler, args.steps, args.guidance)
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
        raise ClipsonicError(f"--device {args.device}: expected auto, cpu, cuda, cuda:N or mps")
    if args.threads is not None:
        runtime.set_threads(args.threads)
    if args.seed is not None:
        runtime.seed_everything(args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, value in COMMON_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, value)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
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
        print(f"clipsonic: error: {error}", file=sys.stderr)
        return 130 if type(error).__name__ == "Interrupted" else 1
    except Exception as error:  # an unexpected failure still gets one line unless --debug
        if args.debug:
            raise
        print(f"clipsonic: error: {type(error).__name__}: {error} (run again with --debug for the traceback)",
              file=sys.stderr)
        return 1
