"""`clipsonic sample`: text or image -> audio files."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from clipsonic.cli.common import LazyBar, add_model_options, add_sampling_options, check_generation_settings, generation_dtype, help_formatter, log
from clipsonic.rerank import MAX_CANDIDATES
from clipsonic.variants import CLAP_TEXT, IMAGE, VARIANTS


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    sample = commands.add_parser("sample", parents=[common], formatter_class=help_formatter,
                                 help="generate audio from a text or an image",
                                 description="Generate audio from a text (ZS: its CLIP text embedding) or an "
                                             "image (IQ: its CLIP image embedding) with a trained UNet; "
                                             "BigVGAN (--vocoder) or Griffin-Lim turns the mel into a waveform. "
                                             "With --candidates N and --clap, each file is the best of N samples "
                                             "by LAION-CLAP score against the text.")
    query = sample.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help='text query, e.g. "a photo of rain"')
    query.add_argument("--image", type=Path, help="image query (png, jpg, webp, ...)")
    sample.add_argument("--variant", choices=list(VARIANTS),
                        help="iq: image embedding; zs: text embedding; pd/sd: image embedding drawn from the text by "
                             "LAION's prior / a prior from train-prior; tta / clap-tta: a UNet trained with "
                             "train --cond clip-text / clap-text (default: iq for --image; for --text sd or pd when "
                             "--prior is given, else zs, or the UNet's tta variant)")
    add_model_options(sample)
    sample.add_argument("--clap", type=Path,
                        help="LAION-CLAP checkpoint (630k-audioset-fusion-best.pt, or ours): scores --candidates, and "
                             "embeds the text for a UNet trained with --cond clap-text")
    sample.add_argument("--clap-tokenizer", type=Path, metavar="DIR",
                        help="folder with roberta-base's vocab.json and merges.txt (default: beside --clap)")
    sample.add_argument("--candidates", type=int, metavar="N",
                        help=f"generate N candidates per output file and keep the one whose CLAP score with --text "
                             f"is highest (needs --clap; 1 to {MAX_CANDIDATES}; default: no ranking)")
    sample.add_argument("--guidance", type=float,
                        help="classifier-free guidance weight w (default: the bundle's recommended weight, the "
                             "demo's 1; else the paper's 1.5)")
    add_sampling_options(sample)
    sample.add_argument("--batch", type=int, default=1, help="number of files to generate (a large batch runs in "
                                                             "chunks, each written as it is done)")
    sample.add_argument("-o", "--output", type=Path, required=True, help="output .wav or .flac "
                                                                          "(NAME_0, NAME_1, ... with --batch)")
    sample.add_argument("--loudness", type=float, metavar="LUFS",
                        help="normalise each file to this integrated loudness (ITU-R BS.1770), e.g. -23 "
                             "(default: keep the model's level; a file that would clip is scaled to peak at -1 dBFS)")
    sample.add_argument("--save-mel", action="store_true", help="also save each log-mel as .npy beside the audio")
    sample.set_defaults(handler=_sample, default_dtype="auto", quick_exit=True)


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
    _check_ranking(args)
    check_generation_settings(args)
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
    dtype, why = generation_dtype(args, device)
    pipeline = Pipeline.load(args.bundle, clip=args.clip, checkpoint=args.checkpoint, prior=args.prior,
                             prior_config=args.prior_config, vocoder=args.vocoder, vocoder_config=args.vocoder_config,
                             device=device, dtype=dtype, clap=args.clap, clap_tokenizer=args.clap_tokenizer)
    if args.clap is not None and args.candidates is None and pipeline.spectrogram.condition != CLAP_TEXT:
        log.warning("--clap is not used: no --candidates, and the UNet was not trained on CLAP embeddings")
    if args.guidance is None:
        args.guidance = pipeline.guidance
    check_generation_settings(args, pipeline.spectrogram.diffusion_steps)
    if why:
        log.info("%s", why)
    variant = args.variant or pipeline.default_variant(image)
    seed = args.seed if args.seed is not None else fresh_seed()
    samples = args.batch * (args.candidates or 1)
    chunk = pipeline.chunk_size(args.seconds)
    chunks = -(-samples // chunk)
    if chunks > 1:
        asked = f"--batch {args.batch}" + (f" x --candidates {args.candidates}" if args.candidates else "")
        log.info("%s: generating %d chunks of up to %d samples, each written when done", asked, chunks, chunk)
    bar = None if args.quiet else LazyBar(total=args.steps * chunks, unit="step", desc=args.sampler)
    sample_rate = pipeline.spectrogram.mel_config.sample_rate
    written, scaled, choices = [], [], []
    try:
        parts = pipeline.generate_chunks(text=args.text, image=image, variant=variant, guidance=args.guidance,
                                         sampler=args.sampler, steps=args.steps, seconds=args.seconds, seed=seed,
                                         batch=samples, progress=bar.update if bar else None)
        for index, wav, spectrogram in _files(args, pipeline, parts, choices):
            path = outputs[index]
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
    for choice in choices:  # after the progress bar, which a line written while it runs would break
        log.info("%s: candidate %d of %d, CLAP score %.4f (all: %s)", outputs[choice.index].name, choice.winner + 1,
                 args.candidates, choice.score, " ".join(f"{score:.4f}" for score in choice.scores))
    if scaled:
        _report_scaled(scaled, len(outputs))
    ranked = f", best of {args.candidates} by CLAP score" if args.candidates else ""
    log.info("variant %s, seed %d, %s x %d steps, guidance %g, %s%s", variant, seed, args.sampler, args.steps,
             args.guidance, str(dtype).removeprefix("torch."), ranked)
    return 0


def _check_ranking(args: argparse.Namespace) -> None:
    """--candidates and the CLAP options, as usage errors before any work."""
    from clipsonic.pipeline import SettingError
    from clipsonic.rerank import check_candidates

    if args.clap_tokenizer is not None and args.clap is None:
        args.usage_error("--clap-tokenizer needs --clap")
    if args.candidates is None:
        return
    if args.image is not None:
        args.usage_error("--candidates ranks by the CLAP score against the text; with --image there is no text")
    if args.clap is None:
        args.usage_error("--candidates needs --clap (the LAION-CLAP model that scores the candidates)")
    try:
        check_candidates(args.candidates)
    except SettingError as error:
        args.usage_error(f"--candidates {error.value}: {error.message}")


def _files(args: argparse.Namespace, pipeline, parts, choices: list):
    """(output index, waveform [samples], log-mel [n_mels, frames]) of each file, from the generated
    chunks: every sample, or with --candidates each output's best candidate (each `Choice` also
    appended to `choices`)."""
    if args.candidates is None:
        for part in parts:
            for offset, (wav, spectrogram) in enumerate(zip(part.wav, part.mel)):
                yield part.start + offset, wav, spectrogram
        return
    from clipsonic.rerank import best_of, clap_scorer

    scorer = clap_scorer(pipeline.clap, args.text, pipeline.spectrogram.mel_config.sample_rate)
    for choice in best_of(parts, args.candidates, scorer):
        choices.append(choice)
        yield choice.index, choice.wav, choice.mel


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
