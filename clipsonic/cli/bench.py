"""`clipsonic bench clip|sample|vocoder|preprocess|ops|clap`: our fast paths against their references."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipsonic.cli.common import command_group, help_formatter, log, print_rows, torch_threads
from clipsonic.errors import ClipsonicError


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    targets = command_group(commands, "bench", "time our fast paths against their references",
                             "Time our fast paths against a reference measured in the same run; prints a Markdown "
                             "table (ratio > 1 means ours is faster).", metavar="TARGET")
    clip = targets.add_parser("clip", parents=[common], formatter_class=help_formatter,
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

    sample = targets.add_parser("sample", parents=[common], formatter_class=help_formatter,
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

    vocoder = targets.add_parser("vocoder", parents=[common], formatter_class=help_formatter,
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

    pre = targets.add_parser("preprocess", parents=[common], formatter_class=help_formatter,
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

    ops = targets.add_parser("ops", parents=[common], formatter_class=help_formatter,
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

    clap = targets.add_parser("clap", parents=[common], formatter_class=help_formatter,
                              help="LAION-CLAP audio embeddings: laion_clap 1.1.7 against ours in fp32 and bf16",
                              description="Time LAION-CLAP audio embeddings of noise clips at 48 kHz with random "
                                          "weights of the full HTSAT-tiny fusion model (timing only): laion_clap "
                                          "1.1.7's get_audio_embedding_from_data, run by --reference-python in a "
                                          "subprocess (needs a source checkout: benchmarks/clap_reference.py), "
                                          "against our CLAP.embed_audio in fp32 and bf16 on the same weights and "
                                          "clips, with the lowest cosine of our embeddings to the reference's.")
    clap.add_argument("--preset", default="htsat-tiny", choices=["htsat-tiny", "tiny"],
                      help="CLAP size: htsat-tiny (LAION's, 154 M parameters; the only one the reference runs) or "
                           "tiny (a smoke test); weights are random")
    clap.add_argument("--clips", type=int, default=512, help="clips to embed (fewer for a quick run)")
    clap.add_argument("--seconds", type=float, default=4.0, help="length of each clip (at most 10)")
    clap.add_argument("--batch", type=int, default=16, help="clips embedded together")
    clap.add_argument("--reference-python", type=Path, metavar="PYTHON",
                      help="an interpreter with laion_clap 1.1.7, e.g. /tmp/clapref/bin/python (the environment of "
                           "tests/fixtures/make_clap_fixtures.py; default: our fp32 is the reference)")
    clap.add_argument("--repeat", type=int, default=1, help="timed passes over all clips (the median is reported)")
    clap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    clap.set_defaults(handler=_bench_clap)


def _bench_clip(args: argparse.Namespace) -> int:

    from clipsonic import bench, clip

    if args.checkpoint is not None:
        model = clip.load_clip(args.checkpoint)
    else:
        model = clip.CLIP(clip.CLIPConfig.preset(args.preset)).eval()
    if any(batch < 1 for batch in args.batch) or args.repeat < 1:
        args.usage_error("--batch and --repeat must be at least 1")
    log.info("timing CLIP (%s) on %d thread(s)", args.checkpoint or args.preset, torch_threads())
    rows = bench.bench_clip(model, args.batch, ["fp32", *args.compare], repeat=args.repeat)
    print_rows(rows, args.json)
    return 0


def _bench_sample(args: argparse.Namespace) -> int:
    from clipsonic import bench

    if args.steps < 2 or args.reference_steps < 6 or args.repeat < 1 or args.seconds <= 0:
        args.usage_error("--steps must be at least 2, --reference-steps at least 6, --repeat at least 1")
    log.info("timing generation (%s UNet, %s CLIP) on %d thread(s)", args.preset, args.clip_preset, torch_threads())
    rows = bench.bench_sample(args.preset, args.clip_preset, args.seconds, args.steps, args.reference_steps,
                              args.reference_steps if args.full_reference else 5, args.repeat)
    print_rows(rows, args.json)
    return 0


def _bench_vocoder(args: argparse.Namespace) -> int:
    from clipsonic import bench
    from clipsonic.ops import anti_alias_native

    if args.repeat < 1 or args.seconds <= 0:
        args.usage_error("--repeat must be at least 1 and --seconds positive")
    if anti_alias_native.cpu_module() is None:
        raise ClipsonicError("the C++ anti-aliased activation cannot be built here (see the warning above)")
    print_rows(bench.bench_vocoder(args.preset, args.seconds, args.repeat), args.json)
    return 0


def _bench_preprocess(args: argparse.Namespace) -> int:
    from clipsonic import bench

    if args.clips < 1 or args.workers < 1 or args.repeat < 1 or args.seconds < 2.05:
        args.usage_error("--clips, --workers and --repeat must be at least 1 and --seconds at least 2.05")
    rows = [row for preset in args.clip_preset
            for row in bench.bench_preprocess(preset, args.clips, args.seconds, args.workers, args.repeat)]
    print_rows(rows, args.json)
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


def _bench_clap(args: argparse.Namespace) -> int:
    from clipsonic import bench

    if args.clips < 1 or args.batch < 1 or args.repeat < 1:
        args.usage_error("--clips, --batch and --repeat must be at least 1")
    if not 0 < args.seconds <= 10:
        args.usage_error(f"--seconds {args.seconds:g}: must be more than 0 and at most 10 (longer clips are fused "
                         f"from three 10-s chunks, another computation)")
    if args.reference_python is not None and not args.reference_python.is_file():
        args.usage_error(f"--reference-python {args.reference_python}: no such file")
    if args.reference_python is not None and args.preset != "htsat-tiny":
        args.usage_error(f"--reference-python runs laion_clap's htsat-tiny model, not --preset {args.preset}")
    log.info("timing LAION-CLAP audio embeddings on %s, %d thread(s)", bench.cpu_model(), torch_threads())
    rows = bench.bench_clap(args.clips, args.seconds, args.batch, args.repeat, args.reference_python, args.preset,
                            seed=args.seed if args.seed is not None else 0)
    print_rows(rows, args.json)
    return 0
