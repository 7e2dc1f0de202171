"""`clipsonic preprocess`: a folder of videos -> a dataset folder."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from clipsonic.cli.common import help_formatter, log
from clipsonic.errors import ClipsonicError


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    pre = commands.add_parser("preprocess", parents=[common], formatter_class=help_formatter,
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
