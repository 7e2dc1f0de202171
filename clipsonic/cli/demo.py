"""`clipsonic make-demo-data` and `clipsonic demo`: the procedural data set and the shipped demo bundle."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from clipsonic.cli.common import help_formatter
from clipsonic.errors import ClipsonicError


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    data = commands.add_parser("make-demo-data", parents=[common], formatter_class=help_formatter,
                               help="write the synthetic audio-visual demo dataset (videos of the demo's sound classes "
                                    "+ labels.csv)",
                               description="Write procedural videos of the demo's sound classes (the vocabulary of "
                                           "the shipped bundle, listed by `clipsonic demo`: rain, bell, bird, ...; "
                                           "224x224 at 4 fps, 16 kHz mono, 4-10 s) whose "
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

    demo = commands.add_parser("demo", parents=[common], formatter_class=help_formatter,
                               help="the shipped demo bundle: show it, check its quality gate, or retrain it",
                               description="Without options: where the demo bundle is, how it was made and its "
                                           "recorded quality gate. --check measures the gate again (SD and IQ "
                                           "samples of each class must be recognised by a classifier fitted on "
                                           "held-out real clips, at least 13 of 16, at their level and nothing "
                                           "over full scale). --retrain rebuilds the bundle from nothing: synthetic "
                                           "videos, contrastive CLIP, preprocess, UNet, CLIP-TTA UNet, prior, demo "
                                           "VGGish, gate (about 52 min on 2 CPU cores).")
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
        device = runtime.resolve_device(args.device)
        gate = demo.quality_gate(demo.load_for_gate(folder, recipe, device), recipe, progress=progress,
                                 vggish=demo.gate_vggish(folder, device))
        demo.record_gate(folder, gate)
    else:
        summary = demo.read_summary(folder)
        print(f"{folder}: demo bundle, recipe {json.dumps(summary['recipe'])}")
        print(f"built in {summary['total_seconds'] / 60:.1f} min on {summary['threads']} thread(s)")
        gate = summary["quality_gate"]
    print(demo.gate_table(gate))
    fads = demo.fad_line(gate)
    if fads:
        print(fads)
    verdict = {True: "passed", False: "FAILED"}
    print(f"recognition (SD and IQ, every class: at least {demo.GATE_THRESHOLD * 16:.0f} of 16 samples): "
          f"{verdict[gate['recognition_passed']]}")
    print(f"level (SD and IQ, every class: median level within {demo.LEVEL_TOLERANCE_DB:g} dB of held-out real clips, "
          f"spread at most {demo.SPREAD_RATIO:g}x theirs, nothing over full scale): {verdict[gate['level_passed']]}")
    print(f"quality gate: {verdict[gate['passed']]}")
    if not gate["passed"]:
        raise ClipsonicError(f"{folder}: the demo bundle fails its quality gate")
    return 0
