"""`clipsonic eval` and `clipsonic eval fad`: the paper's objective evaluation."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipsonic.cli.common import add_model_options, add_sampling_options, check_generation_settings, help_formatter, log, parse_floats
from clipsonic.variants import VARIANTS


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    evaluation = commands.add_parser(
        "eval", parents=[common], formatter_class=help_formatter,
        help="FAD (our VGGish), the paper's Tables 1 and 2, guidance sweeps; 'eval fad A B' for two folders",
        description="Generate --samples samples per model from the dataset's test split as the paper does (text "
                    "\"a photo of [label]\" for ZS/PD/SD/CLIP-TTA, the clip's frame for IQ), embed them with VGGish "
                    "and compute the FAD against the test clips' real audio; write Table 1 (FAD; the CLAP score is "
                    "not computed), Table 2 (cosine similarities), a guidance sweep (CSV, Markdown, PNG with "
                    "matplotlib) and summary.json to --out. 'clipsonic eval fad DIR_A DIR_B' gives the FAD "
                    "between two folders of audio instead.")
    evaluation.add_argument("dataset", type=Path, help="dataset folder from `clipsonic preprocess` (its test split)")
    evaluation.add_argument("--out", type=Path, required=True, help="results folder")
    add_model_options(evaluation)
    evaluation.add_argument("--tta-checkpoint", type=Path, help="a UNet from `train --cond clip-text` (the CLIP-TTA row) "
                                                                "or `--cond clap-text` (CLAP-TTA, with --clap); default: "
                                                                "the bundle's tta.pt when it has one (the demo bundle "
                                                                "has a CLIP-TTA)")
    evaluation.add_argument("--vggish", type=Path, help="VGGish weights (torchvggish's vggish-10086976.pth; default: "
                                                        "the bundle's own vggish.pt (the demo bundle has one), else "
                                                        "from the user weights folder)")
    evaluation.add_argument("--clap", type=Path, help="LAION-CLAP checkpoint for the CLAP score and Table 5 "
                                                      "(630k-audioset-fusion-best.pt, roberta-base's vocab.json and "
                                                      "merges.txt beside it; default: from the user weights folder, "
                                                      "else no CLAP score)")
    evaluation.add_argument("--variants", help="comma-separated subset of iq,zs,pd,sd,tta (default: every one the "
                                               "given models allow)")
    evaluation.add_argument("--samples", type=int, default=512, help="samples per model and guidance weight (K)")
    evaluation.add_argument("--guidance", type=float,
                            help="classifier-free guidance weight w (default: the bundle's recommended weight, "
                                 "the demo's 1; else the paper's 1.5)")
    evaluation.add_argument("--guidance-sweep", help="comma-separated weights, e.g. 1,1.5,2,3 (replaces --guidance)")
    add_sampling_options(evaluation)
    evaluation.add_argument("--batch", type=int, default=16, help="samples generated together")
    evaluation.add_argument("--save-audio", action="store_true", help="also keep the generated audio in --out/samples")
    evaluation.add_argument("--no-reconstruction", action="store_true", help="skip the mel-reconstruction row")
    evaluation.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluation.set_defaults(handler=_eval)

    # `clipsonic eval fad A B`: main() routes "eval fad" here (argparse cannot mix the two forms).
    fad = commands.add_parser("eval-fad", parents=[common], formatter_class=help_formatter, prog="clipsonic eval fad",
                              description="FAD (VGGish embeddings, float64 Fréchet distance) between two folders of "
                                          "audio or video files (searched recursively); either may instead be a "
                                          "statistics .npz written by --save-stats or by `clipsonic eval`.")
    fad.add_argument("a", type=Path, help="first folder (or .npz)")
    fad.add_argument("b", type=Path, help="second folder (or .npz)")
    fad.add_argument("--vggish", type=Path, help="VGGish weights (default: from the user weights folder)")
    fad.add_argument("--save-stats", type=Path, help="also write each folder's statistics here (A.npz, B.npz)")
    fad.set_defaults(handler=_eval_fad)


def _eval(args: argparse.Namespace) -> int:
    from clipsonic import runtime
    from clipsonic.data import Dataset
    from clipsonic.bundle import load_tta, open_bundle, shipped_bundle
    from clipsonic.eval.evaluate import EvalConfig, Evaluator, clap_path, evaluate, vggish_path
    from clipsonic.variants import CLAP_TEXT, PRIOR_KINDS
    from clipsonic.pipeline import Pipeline
    from clipsonic.vggish import load_vggish

    weights = [args.guidance] if args.guidance_sweep is None else parse_floats(args, args.guidance_sweep, "--guidance-sweep")
    check_generation_settings(args, guidance=weights)
    if args.samples < 1:
        args.usage_error(f"--samples {args.samples}: must be at least 1")
    dataset = Dataset(args.dataset, split="test")
    device = runtime.resolve_device(args.device)
    dtype = runtime.resolve_dtype(args.dtype, device)
    demo = args.bundle is None and args.clip is None and args.checkpoint is None  # as Pipeline.load decides
    bundle = shipped_bundle() if demo and shipped_bundle().is_dir() else args.bundle
    vggish = load_vggish(vggish_path(args.vggish, bundle), dtype=dtype, device=device)
    pipeline = Pipeline.load(args.bundle, clip=args.clip, checkpoint=args.checkpoint, prior=args.prior,
                             prior_config=args.prior_config, vocoder=args.vocoder, vocoder_config=args.vocoder_config,
                             device=device, dtype=dtype)
    weights = [pipeline.guidance if weight is None else weight for weight in weights]
    check_generation_settings(args, pipeline.spectrogram.diffusion_steps, weights)
    config = EvalConfig(samples=args.samples, guidance=tuple(weights), sampler=args.sampler, steps=args.steps,
                        seconds=args.seconds, batch=args.batch, seed=args.seed if args.seed is not None else 0)
    tta_file = args.tta_checkpoint
    if tta_file is None and bundle is not None:
        tta_file = open_bundle(bundle).path("tta")
        if tta_file is not None:
            log.info("the baseline row from the bundle's own text-conditioned UNet %s", tta_file)
    tta = None if tta_file is None else load_tta(tta_file, pipeline.clip, dtype=dtype, device=device)
    clap = None
    clap_file = clap_path(args.clap)
    if clap_file is not None:
        from clipsonic.clap import load_clap

        clap = load_clap(clap_file, dtype=dtype, device=device)
    evaluator = Evaluator(pipeline, dataset, vggish, config, tta=tta, clap=clap)
    available = evaluator.available_variants()
    variants = available if args.variants is None else [v.strip() for v in args.variants.split(",") if v.strip()]
    for variant in variants:
        if variant not in VARIANTS:
            args.usage_error(f"--variants: unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")
        if variant not in available:
            chosen = VARIANTS[variant]
            needs = f"{PRIOR_KINDS[chosen.prior]} (--prior)" if chosen.prior else \
                f"a UNet trained on {chosen.trained_on} embeddings (--tta-checkpoint, from train --cond " \
                f"{'clap-text' if chosen.trained_on == CLAP_TEXT else 'clip-text'})"
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
    if clap is not None:
        print((args.out / "table5.md").read_text(encoding="utf-8"))
    if len(weights) > 1:
        print((args.out / "sweep.md").read_text(encoding="utf-8"))
    log.info("results in %s (summary.json, %d FAD values)", args.out, len(summary["fad"]))
    return 0


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
