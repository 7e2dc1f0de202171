"""`clipsonic train`, `train-prior`, `train-vocoder`: the three training runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipsonic.cli.common import help_formatter, log, parameter_count
from clipsonic.errors import ClipsonicError
from clipsonic.variants import CLAP_TEXT, CONDITIONS


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    train = commands.add_parser("train", parents=[common], formatter_class=help_formatter,
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
    conditions = train.add_mutually_exclusive_group()
    conditions.add_argument("--cond", choices=list(CONDITIONS), default="image",
                            help='what the UNet is conditioned on. image: the CLIP image embedding of a frame '
                                 '(CLIPSonic); clip-text: the CLIP text embedding of "a photo of [label]" (the CLIP-TTA baseline); '
                                 'clap-text: the LAION-CLAP text embedding of "the sound of [label]" (the CLAP-TTA '
                                 'baseline, needs --clap)')
    conditions.add_argument("--text-cond", dest="cond", action="store_const", const="clip-text",
                            help="the same as --cond clip-text")
    train.add_argument("--clap", type=Path, help="LAION-CLAP checkpoint for --cond clap-text "
                                                 "(630k-audioset-fusion-best.pt, or ours)")
    train.add_argument("--clap-tokenizer", type=Path, metavar="DIR",
                       help="folder with roberta-base's vocab.json and merges.txt (default: beside --clap)")
    train.add_argument("--start-from", type=Path, metavar="CHECKPOINT",
                       help="begin with a trained UNet's weights, size and normalisation (its condition and "
                            "prediction must be the ones asked for): to go on with other settings, e.g. crops "
                            "of the length you will generate, which --resume refuses")
    train.add_argument("--prediction", choices=("eps", "v"), default="eps",
                       help="what the UNet learns to predict: the noise (the paper's) or the velocity, "
                            "better conditioned at low SNR (the demo bundle's)")
    train.set_defaults(handler=_train)

    prior = commands.add_parser("train-prior", parents=[common], formatter_class=help_formatter,
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

    vocoder = commands.add_parser("train-vocoder", parents=[common], formatter_class=help_formatter,
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
    _add_loop_options(vocoder, steps=500_000, weight_decay=0.01, batch_size=16, ema_decay=0.0)
    vocoder.add_argument("--lr-decay", type=float, default=0.9999996, help="per-step learning-rate decay factor")
    vocoder.set_defaults(handler=_train_vocoder)


def _add_loop_options(parser: argparse.ArgumentParser, **defaults) -> None:
    """The optimisation and checkpointing options the trainers share: TrainConfig's `_option` fields,
    with this command's `defaults` (by field name)."""
    import dataclasses

    from clipsonic.train.settings import TrainConfig

    for field in dataclasses.fields(TrainConfig):
        if "help" not in field.metadata:
            continue
        flag = field.metadata["flag"] or "--" + field.name.replace("_", "-")
        default = defaults.get(field.name, field.default)
        if isinstance(field.default, bool):
            parser.add_argument(flag, dest=field.name, action="store_true", help=field.metadata["help"])
        else:
            parser.add_argument(flag, dest=field.name, type=type(field.default), default=default,
                                metavar=flag.removeprefix("--").replace("-", "_").upper(), help=field.metadata["help"])
    parser.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _train(args: argparse.Namespace) -> int:
    from clipsonic.data import Dataset
    from clipsonic.train.unet import DiffusionTask, DiffusionTrainingConfig
    from clipsonic.train.loop import saved_run, train
    from clipsonic.unet import UNetCheckpointInfo, UNetConfig

    if args.crop_frames < 1:
        args.usage_error("--crop-frames must be at least 1")
    if not 0 <= args.cond_drop < 1:
        args.usage_error("--cond-drop must be in [0, 1)")
    condition = CONDITIONS[args.cond]
    if condition == CLAP_TEXT and args.clap is None:
        args.usage_error("--cond clap-text needs --clap (the LAION-CLAP model that embeds the labels)")
    if condition != CLAP_TEXT and args.clap is not None:
        args.usage_error(f"--clap is only used with --cond clap-text, not --cond {args.cond}")
    if args.clap_tokenizer is not None and args.clap is None:
        args.usage_error("--clap-tokenizer needs --clap")
    config, device = _loop_config(args)
    settings = DiffusionTrainingConfig(crop_frames=args.crop_frames, cond_drop=args.cond_drop, condition=condition,
                                       prediction=args.prediction)
    if args.start_from is not None and args.resume:
        args.usage_error("--start-from begins a new run; --resume goes on with the one in --out (give one of them)")
    unet_config, mel_norm = UNetConfig.preset(args.preset), None
    saved = saved_run(args.out, "unet") if args.resume else None
    if saved is not None:  # the model as it was built; the training options given must match (train checks)
        unet_config = UNetConfig.from_dict(saved.config)
        mel_norm = UNetCheckpointInfo.from_extra(saved.extra).mel_norm
    clap = None
    if args.clap is not None:
        from clipsonic.clap import load_clap

        clap = load_clap(args.clap, args.clap_tokenizer)  # on the CPU: it embeds each label once
    dataset = Dataset(args.dataset, split="train")
    if args.start_from is not None:
        task = DiffusionTask.starting_from(args.start_from, dataset, settings, clap)
    else:
        task = DiffusionTask(dataset, unet_config, settings, mel_norm, clap)
    del clap
    log.info("training a %s-parameter UNet on %d clips of %s", parameter_count(task.model), len(task.records),
             args.dataset)
    path = train(task, config, args.out, resume=args.resume, device=device, progress=not args.no_progress)
    log.info("done: %s", path)
    return 0


def _loop_config(args: argparse.Namespace, **settings):
    """The TrainConfig and device that the trainers' options describe (`settings` override)."""
    import dataclasses

    from clipsonic import runtime
    from clipsonic.train.settings import TrainConfig

    given = {}
    for field in dataclasses.fields(TrainConfig):
        if "help" in field.metadata:
            given[field.name] = getattr(args, field.name)
            bound = field.metadata["at_least"]
            if bound is not None and given[field.name] < bound:
                flag = field.metadata["flag"] or "--" + field.name.replace("_", "-")
                args.usage_error(f"{flag} must be at least {bound}")
    given["bf16"] = given["bf16"] or args.dtype == "bf16"
    config = TrainConfig(**given, seed=args.seed if args.seed is not None else 0, **settings)
    return config, runtime.resolve_device(args.device)


def _train_vocoder(args: argparse.Namespace) -> int:
    from clipsonic.train.vocoder import VocoderTask, VocoderTrainingConfig
    from clipsonic.train.loop import saved_run, train
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
    saved = saved_run(args.out, "bigvgan") if args.resume else None
    if saved is not None:
        model_config = BigVGANConfig.from_dict(saved.config)
        settings = VocoderTrainingConfig.from_dict(saved.training)
    task = VocoderTask(args.audio, model_config, settings)
    log.info("training a %s-parameter BigVGAN on %.1f s of audio from %s", parameter_count(task.model),
             task.training_audio.numel() / model_config.sampling_rate, args.audio)
    path = train(task, config, args.out, resume=args.resume, device=device, progress=not args.no_progress)
    log.info("done: %s", path)
    return 0


def _train_prior(args: argparse.Namespace) -> int:
    from clipsonic.data import Dataset
    from clipsonic.prior import PriorConfig
    from clipsonic.train.prior import PriorTask
    from clipsonic.train.loop import saved_run, train

    if not 0 <= args.text_drop < 1:
        args.usage_error("--text-drop must be in [0, 1)")
    config, device = _loop_config(args)
    prior_config = PriorConfig.preset(args.preset, cond_drop_prob=args.text_drop)
    if args.depth is not None:
        if args.depth < 1:
            args.usage_error("--depth must be at least 1")
        prior_config = prior_config.replace(net=prior_config.net.replace(depth=args.depth))
    saved = saved_run(args.out, "prior") if args.resume else None
    if saved is not None:
        prior_config = PriorConfig.from_dict(saved.config)
    task = PriorTask(Dataset(args.dataset, split="train"), prior_config)
    log.info("training a %s-parameter prior on %d labelled clips of %s", parameter_count(task.model),
             len(task.records), args.dataset)
    path = train(task, config, args.out, resume=args.resume, device=device, progress=not args.no_progress)
    log.info("done: %s", path)
    return 0
