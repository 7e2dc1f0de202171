"""Does the generated level depend on the generated length? (the [demo] level diagnosis)

For each class asked for and each length, 16 samples (the quality gate's seeds, queries, sampler,
guidance and precision) from a bundle, optionally with another UNet in place of its unet.pt, and
the median RMS level of the bundle's held-out real clips cut to the same length:

    python benchmarks/level_vs_length.py --classes bird,engine,rain,drum --seconds 1,4
    python benchmarks/level_vs_length.py --unet run/long/checkpoint.pt --variants iq

The shipped demo UNet (trained on 1-s crops) is 1.4-3.2 dB louder from 2 s on than at 1 s, and
bird and engine 2.3-4.8 dB louder than the real clips; a second phase on 4-s crops
(`train --start-from`) made every class quieter at every length instead (BENCHMARKS.md, "level
against length"). "mel offset" is the generated log-mels' energy (dB) minus the real clips' log-mel energy at the
same length: where it follows the level offset, the UNet made the level; where it does not, the
vocoder did. "real via Griffin-Lim" is the vocoder alone: the real clips' own mels vocoded, minus
their level.
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from clipsonic.audio import griffin_lim, mel_spectrogram
from clipsonic.bundle import shipped_bundle
from clipsonic.demo import DemoRecipe
from clipsonic.demo.gate import FULL_SCALE, held_out_clips, load_for_gate, rms_db
from clipsonic.demo.recipe import CAPTION_TEMPLATES
from clipsonic.demo.synthetic import CLASSES, class_picture
from clipsonic.pipeline import Pipeline
from clipsonic.runtime import resolve_dtype
from clipsonic.variants import IMAGE, VARIANTS, query_embeddings


def mel_energy_db(log_mel: torch.Tensor) -> np.ndarray:
    """The energy of log-mel magnitudes [B, n_mels, frames] in dB, one value per item."""
    return (10 * torch.log10(torch.exp(2 * log_mel.float()).mean(dim=(-2, -1)))).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the shipped demo bundle)")
    parser.add_argument("--unet", type=Path, help="a UNet checkpoint to use instead of the bundle's")
    parser.add_argument("--classes", default="bird,engine,rain,drum", help="comma-separated demo classes")
    parser.add_argument("--variants", default="iq,sd", help="comma-separated variants (iq, sd, zs)")
    parser.add_argument("--seconds", default="1,4", help="comma-separated lengths")
    parser.add_argument("--samples", type=int, default=16, help="samples per class, variant and length")
    args = parser.parse_args()

    recipe = DemoRecipe()
    bundle = args.bundle or shipped_bundle()
    if args.unet is None:
        pipeline = load_for_gate(bundle, recipe)
    else:
        pipeline = Pipeline.load(bundle, checkpoint=args.unet, dtype=resolve_dtype(recipe.gate_dtype))
    sample_rate = pipeline.spectrogram.mel_config.sample_rate
    labels, audio = held_out_clips(recipe, sample_rate)
    count = args.samples
    variants = args.variants.split(",")
    head = ["class", "length", "real level", "real via Griffin-Lim"] + [f"{v.upper()} {what}" for v in variants
                                                for what in ("level", "offset", "mel offset", "over FS")]
    print("| " + " | ".join(head) + " |\n|---|---|" + "---:|" * (len(head) - 2))
    config = pipeline.spectrogram.mel_config
    for label in args.classes.split(","):
        seed = recipe.seed + 1000 * CLASSES.index(label)
        for seconds in (float(s) for s in args.seconds.split(",")):
            real_wavs = [wav[:round(seconds * sample_rate)] for clip_label, wav in zip(labels, audio)
                         if clip_label == label]
            real = float(np.median([rms_db(wav) for wav in real_wavs]))
            real_mels = [mel_spectrogram(torch.from_numpy(wav)[None], config) for wav in real_wavs]  # lengths differ
            real_mel = float(np.median([mel_energy_db(mel)[0] for mel in real_mels]))
            rebuilt = float(np.median([rms_db(griffin_lim(mel, config)[0].numpy()) for mel in real_mels]))
            cells = [label, f"{seconds:g} s", f"{real:.1f} dB", f"{rebuilt - real:+.1f} dB"]
            for variant in variants:
                query = {"images": [class_picture(label, seed=recipe.seed)]} if VARIANTS[variant].query == IMAGE \
                    else {"texts": [CAPTION_TEMPLATES[0].format(label=label)] * count}
                embedding = query_embeddings(variant, pipeline.clip, prior=pipeline.prior, seed=seed, batch=count,
                                             prior_steps=pipeline.prior_steps,
                                             prior_candidates=pipeline.prior_candidates, **query)
                mel = pipeline.generate_mel(embedding, recipe.gate_guidance, "dpm++", recipe.gate_steps, seconds,
                                            seed, batch=count)
                wavs = pipeline.vocode(mel, seconds, seed=seed).float().numpy()
                level = float(np.median([rms_db(wav) for wav in wavs]))
                over = int((np.abs(wavs).max(axis=1) > FULL_SCALE).sum())
                mel_offset = float(np.median(mel_energy_db(mel))) - real_mel
                cells += [f"{level:.1f} dB", f"{level - real:+.1f} dB", f"{mel_offset:+.1f} dB", str(over)]
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
