"""Timing helpers and the benchmarks behind `clipsonic bench`.

Each benchmark times our path against a reference measured in the same run and reports the
ratio (reference time / our time, so > 1 means faster) with the median of several repeats.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence

import torch


@dataclasses.dataclass(frozen=True)
class Timing:
    name: str
    batch: int
    dtype: str
    seconds: float  # median over repeats
    best: float
    ratio: float | None = None  # reference seconds / these seconds
    agreement: float | None = None  # cosine similarity of outputs to the fp32 reference

    def as_row(self) -> dict:
        return dataclasses.asdict(self)


def time_call(fn: Callable[[], object], repeat: int = 3, warmup: int = 1) -> tuple[float, float, object]:
    """Median and best wall-clock seconds of `fn()` over `repeat` runs after `warmup` runs, and its last output."""
    output = None
    with torch.inference_mode():
        for _ in range(warmup):
            output = fn()
        samples = []
        for _ in range(repeat):
            start = time.perf_counter()
            output = fn()
            samples.append(time.perf_counter() - start)
    return statistics.median(samples), min(samples), output


def bench_clip(model_fp32, batches: Sequence[int], dtypes: Sequence[str], repeat: int = 3,
               warmup: int = 1, seed: int = 0) -> list[Timing]:
    """CLIP image encoding: the eager float32 model (reference) against our float32 and low-precision paths."""
    import copy

    from clipsonic.nn import set_precision
    from clipsonic.runtime import resolve_dtype

    size = model_fp32.config.image_resolution
    generator = torch.Generator().manual_seed(seed)
    rows = []
    variants = {name: set_precision(copy.deepcopy(model_fp32), resolve_dtype(name)) if name != "fp32" else model_fp32
                for name in dtypes}
    for batch in batches:
        pixels = torch.randn(batch, 3, size, size, generator=generator)
        reference_seconds, reference_best, reference_out = time_call(
            lambda: model_fp32.encode_image(pixels), repeat, warmup)
        rows.append(Timing("clip.encode_image (reference: eager fp32)", batch, "fp32", reference_seconds, reference_best, 1.0, 1.0))
        for name, model in variants.items():
            if name == "fp32":
                continue
            seconds, best, out = time_call(lambda: model.encode_image(pixels), repeat, warmup)
            agreement = torch.nn.functional.cosine_similarity(out.double(), reference_out.double()).min().item()
            rows.append(Timing("clip.encode_image", batch, name, seconds, best, reference_seconds / seconds, agreement))
    return rows


def markdown_table(rows: Sequence[Timing]) -> str:
    lines = ["| benchmark | batch | dtype | median s | best s | speed-up vs reference | min cosine vs fp32 |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        agreement = "" if row.agreement is None else f"{row.agreement:.5f}"
        lines.append(f"| {row.name} | {row.batch} | {row.dtype} | {row.seconds:.4f} | {row.best:.4f} | {ratio} | {agreement} |")
    return "\n".join(lines)


def bench_sample(unet_preset: str = "paper", clip_preset: str = "paper", seconds: float = 4.0, steps: int = 25,
                 reference_steps: int = 1000, measured_reference_steps: int = 5, repeat: int = 3,
                 seed: int = 0) -> list[Timing]:
    """Text-to-audio generation with random weights of the given sizes.

    Rows: one guided UNet step (batch 2: conditional and unconditional halves) in fp32 and
    bf16; then end to end (CLIP text encoding, sampling, Griffin-Lim) for our path (bf16,
    DPM-Solver++ with `steps` steps) against the paper's (fp32, DDPM with `reference_steps`
    steps). The reference's sampling time is its measured per-step time times
    `reference_steps` (`measured_reference_steps` steps are run); pass
    ``measured_reference_steps=reference_steps`` to run it all.
    """
    import copy

    from clipsonic.audio import griffin_lim
    from clipsonic.clip import CLIP, CLIPConfig
    from clipsonic.diffusion import GaussianDiffusion, classifier_free_guidance
    from clipsonic.nn import set_precision
    from clipsonic.tokenizer import tokenize
    from clipsonic.unet import UNet, UNetConfig

    torch.manual_seed(seed)
    clip32 = CLIP(CLIPConfig.preset(clip_preset)).eval()
    clip16 = set_precision(copy.deepcopy(clip32), torch.bfloat16)
    unet32 = UNet(UNetConfig.preset(unet_preset, cond_dim=clip32.config.embed_dim)).eval()
    for parameter in unet32.parameters():  # no zero-initialised layers: time realistic arithmetic
        parameter.data.add_(1e-3 * torch.randn_like(parameter))
    unet16 = set_precision(copy.deepcopy(unet32), torch.bfloat16).to(memory_format=torch.channels_last)
    multiple = unet32.config.downsampling
    frames = -(-round(seconds * 16000 / 512) // multiple) * multiple
    x = torch.randn(2, 1, 64, frames, generator=torch.Generator().manual_seed(seed))
    t, cond, drop = torch.tensor([500.0, 500.0]), torch.randn(2, clip32.config.embed_dim), torch.tensor([False, True])
    rows = []
    step32, best32, out32 = time_call(lambda: unet32(x, t, cond, drop), repeat)
    rows.append(Timing(f"unet step, guided batch 2 x {frames} frames (reference: fp32)", 2, "fp32", step32, best32, 1.0, 1.0))
    step16, best16, out16 = time_call(lambda: unet16(x, t, cond, drop), repeat)
    agreement = torch.nn.functional.cosine_similarity(out16.double().flatten(), out32.double().flatten(), dim=0).item()
    rows.append(Timing(f"unet step, guided batch 2 x {frames} frames", 2, "bf16", step16, best16, step32 / step16, agreement))

    tokens = tokenize(["a photo of rain"], clip32.config.context_length)
    diffusion = GaussianDiffusion.cosine(4000)
    noise = torch.randn(1, 1, 64, frames, generator=torch.Generator().manual_seed(seed))

    def generate(clip, unet, sampler, count):
        query = clip.encode_text(tokens)
        mel = diffusion.sample(classifier_free_guidance(unet, query, 1.5), noise, sampler, count,
                               generator=torch.Generator().manual_seed(seed))
        return griffin_lim(mel[:, 0].float())

    ours, ours_best, _ = time_call(lambda: generate(clip16, unet16, "dpm++", steps), repeat)
    measured, _, _ = time_call(lambda: generate(clip32, unet32, "ddpm", measured_reference_steps), 1)
    if measured_reference_steps == reference_steps:
        reference = measured
    else:  # one step costs the fixed work (text encoding, vocoding) plus one network call
        single, _, _ = time_call(lambda: generate(clip32, unet32, "ddpm", 1), 1)
        reference = single + (measured - single) / (measured_reference_steps - 1) * (reference_steps - 1)
    name = f"end to end, {seconds:g} s of audio"
    label = "measured" if measured_reference_steps == reference_steps else f"{measured_reference_steps} steps timed, scaled"
    rows.append(Timing(f"{name} (reference: DDPM-{reference_steps}, {label})", 1, "fp32", reference, reference, 1.0))
    rows.append(Timing(f"{name}, DPM-Solver++ {steps} steps", 1, "bf16", ours, ours_best, reference / ours))
    return rows


def bench_vocoder(presets: Sequence[str] = ("paper", "paper-large"), seconds: float = 4.0, repeat: int = 3,
                  seed: int = 0) -> list[Timing]:
    """The anti-aliased activation (compiled against the reference) on typical BigVGAN shapes, then
    whole BigVGANs (random weights) on `seconds` of audio: the reference activations in float32
    (what NVIDIA's torch path computes) against ours in float32 and bfloat16."""
    import copy

    from clipsonic import ops
    from clipsonic.nn import set_precision
    from clipsonic.ops.anti_alias_reference import kaiser_sinc_filter
    from clipsonic.vocoder import BigVGAN, BigVGANConfig

    generator = torch.Generator().manual_seed(seed)
    taps = kaiser_sinc_filter(0.25, 0.3, 12)
    rows = []
    samples = int(seconds * 16000)
    for channels, length in ((256, samples // 64), (64, samples // 4), (32, samples)):
        x = torch.randn(1, channels, length, generator=generator)
        alpha, beta = torch.rand(channels, generator=generator) + 0.5, torch.rand(channels, generator=generator) + 0.5
        name = f"anti_alias_activation [1, {channels}, {length}]"
        ref, ref_best, ref_out = time_call(lambda: ops.anti_alias_activation(x, taps, taps, alpha, beta,
                                                                            impl="reference"), repeat)
        rows.append(Timing(f"{name} (reference)", 1, "fp32", ref, ref_best, 1.0, 1.0))
        for dtype in (torch.float32, torch.bfloat16):
            xd = x.to(dtype)
            ours, best, out = time_call(lambda: ops.anti_alias_activation(xd, taps, taps, alpha, beta, impl="cpp"),
                                        repeat)
            agreement = torch.nn.functional.cosine_similarity(out.double().flatten(), ref_out.double().flatten(), dim=0).item()
            rows.append(Timing(f"{name} (C++)", 1, "fp32" if dtype == torch.float32 else "bf16", ours, best,
                               ref / ours, agreement))
    frames = round(seconds * 16000 / 512)
    for preset in presets:
        torch.manual_seed(seed)
        reference = BigVGAN(BigVGANConfig.preset(preset)).eval().use_activation_impl("reference")
        mel = torch.randn(1, reference.config.num_mels, frames, generator=generator) - 5
        fast = copy.deepcopy(reference).use_activation_impl(None)
        fast16 = set_precision(copy.deepcopy(fast), torch.bfloat16)
        name = f"BigVGAN {preset} ({reference.config.upsample_initial_channel} ch), {seconds:g} s"
        ref, ref_best, ref_out = time_call(lambda: reference(mel), repeat)
        rows.append(Timing(f"{name} (reference activations)", 1, "fp32", ref, ref_best, 1.0, 1.0))
        for label, model in (("fp32", fast), ("bf16", fast16)):
            ours, best, out = time_call(lambda: model(mel), repeat)
            error = ((out.float() - ref_out).norm() / ref_out.norm()).item()
            rows.append(Timing(f"{name} (relative error {error:.1e})", 1, label, ours, best, ref / ours,
                               torch.nn.functional.cosine_similarity(out.double().flatten(), ref_out.double().flatten(), dim=0).item()))
    return rows
