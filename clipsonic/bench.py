"""Timing helpers and the benchmarks behind `clipsonic bench`.

Each benchmark times our path against a reference measured in the same run and reports the
ratio (reference time / our time, so > 1 means faster) with the median of several repeats.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

import torch

log = logging.getLogger(__name__)


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


def time_call(fn: Callable[[], object], repeat: int = 3, warmup: int = 1,
              inference: bool = True) -> tuple[float, float, object]:
    """Median and best wall-clock seconds of `fn()` over `repeat` runs after `warmup` runs, and its last output.

    `inference` runs `fn` under `torch.inference_mode` (pass False to time training steps)."""
    output = None
    with torch.inference_mode() if inference else contextlib.nullcontext():
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


def random_weights_(module: torch.nn.Module) -> torch.nn.Module:
    """Add a little noise to every parameter, in place: no zero-initialised layer (a UNet's output
    convolutions) is left, since zeros can time faster than real arithmetic."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(1e-3 * torch.randn_like(parameter))
    return module


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
    random_weights_(unet32)
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
                  seed: int = 0, device: str = "cpu",
                  activation_shapes: Sequence[tuple[int, int, int]] | None = None) -> list[Timing]:
    """The anti-aliased activation (compiled against the reference, `bench_anti_alias`) on typical
    BigVGAN shapes (`activation_shapes`, default three of `seconds` of audio; () skips them), then
    whole BigVGANs (random weights) on `seconds` of audio: the reference activations in float32
    (what NVIDIA's torch path computes) against ours in float32 and bfloat16, on `device`."""
    import copy

    from clipsonic.nn import set_precision
    from clipsonic.vocoder import BigVGAN, BigVGANConfig

    target = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    samples = int(seconds * 16000)
    if activation_shapes is None:
        activation_shapes = ((1, 256, samples // 64), (1, 64, samples // 4), (1, 32, samples))
    rows: list[Timing] = list(bench_anti_alias(device, activation_shapes, repeat=repeat, generator=generator))
    frames = round(seconds * 16000 / 512)
    for preset in presets:
        torch.manual_seed(seed)
        reference = BigVGAN(BigVGANConfig.preset(preset)).eval().use_activation_impl("reference").to(target)
        mel = (torch.randn(1, reference.config.num_mels, frames, generator=generator) - 5).to(target)
        fast = copy.deepcopy(reference).use_activation_impl(None)
        fast16 = set_precision(copy.deepcopy(fast), torch.bfloat16)
        name = f"BigVGAN {preset} ({reference.config.upsample_initial_channel} ch), {seconds:g} s"
        ref, ref_best, ref_out = time_device(lambda: reference(mel), target, repeat, warmup=1)
        rows.append(Timing(f"{name} (reference activations)", 1, "fp32", ref, ref_best, 1.0, 1.0))
        for label, model in (("fp32", fast), ("bf16", fast16)):
            ours, best, out = time_device(lambda: model(mel), target, repeat, warmup=1)
            error = ((out.float() - ref_out).norm() / ref_out.norm()).item()
            rows.append(Timing(f"{name} (relative error {error:.1e})", 1, label, ours, best, ref / ours,
                               _cosine(out, ref_out)))
    return rows


def bench_anti_alias(device: str = "cpu", shapes: Sequence[tuple[int, int, int]] = ((1, 256, 1024),),
                     dtypes: Sequence[str] = ("fp32", "bf16"), repeat: int = 3, warmup: int = 1, inner: int = 1,
                     seed: int = 0, generator: torch.Generator | None = None) -> list[OpTiming]:
    """The compiled anti-aliased SnakeBeta (C++ on CPU, CUDA on a GPU) against the PyTorch reference
    in float32, on x [B, C, T] for each of `shapes`, per dtype in `dtypes`; throughput in GB/s of x
    read plus y written. Random inputs come from `generator` (CPU; default: seeded with `seed`)."""
    from clipsonic import ops
    from clipsonic.ops.anti_alias_reference import kaiser_sinc_filter
    from clipsonic.runtime import resolve_dtype

    target = torch.device(device)
    impl, label = ("cuda", "CUDA") if target.type == "cuda" else ("cpp", "C++")
    generator = torch.Generator().manual_seed(seed) if generator is None else generator
    taps = kaiser_sinc_filter(0.25, 0.3, 12).to(target)
    rows = []
    for shape in shapes:
        channels = shape[1]
        x = torch.randn(shape, generator=generator).to(target)
        alpha = (torch.rand(channels, generator=generator) + 0.5).to(target)
        beta = (torch.rand(channels, generator=generator) + 0.5).to(target)
        name = f"anti_alias_activation {list(shape)}"
        ref, ref_best, ref_out = time_device(lambda: ops.anti_alias_activation(x, taps, taps, alpha, beta,
                                                                              impl="reference"),
                                             target, repeat, warmup, inner)
        gigabytes = 2 * x.numel() * x.element_size() / 1e9
        rows.append(OpTiming(f"{name} (reference)", shape[0], "fp32", ref, ref_best, 1.0, 1.0, gigabytes / ref, "GB/s"))
        for dtype_name in dtypes:
            xd = x.to(resolve_dtype(dtype_name))
            ours, best, out = time_device(lambda: ops.anti_alias_activation(xd, taps, taps, alpha, beta, impl=impl),
                                          target, repeat, warmup, inner)
            gigabytes = 2 * xd.numel() * xd.element_size() / 1e9
            rows.append(OpTiming(f"{name} ({label})", shape[0], dtype_name, ours, best, ref / ours,
                                 _cosine(out, ref_out), gigabytes / ours, "GB/s"))
    return rows


@dataclasses.dataclass(frozen=True)
class OpTiming(Timing):
    """A kernel's timing with its throughput: TFLOP/s for attention, GB/s for memory-bound ops."""

    throughput: float | None = None
    unit: str = ""
    of_copy: float | None = None  # GB/s as a fraction of a plain clone's GB/s on the same tensor


def ops_markdown_table(rows: Sequence[OpTiming]) -> str:
    lines = ["| benchmark | dtype | median ms | best ms | throughput | % of copy | speed-up vs reference | "
             "min cosine vs reference |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        throughput = "" if row.throughput is None else f"{row.throughput:.1f} {row.unit}"
        of_copy = "" if row.of_copy is None else f"{100 * row.of_copy:.0f}%"
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        agreement = "" if row.agreement is None else f"{row.agreement:.5f}"
        lines.append(f"| {row.name} | {row.dtype} | {1e3 * row.seconds:.3f} | {1e3 * row.best:.3f} | {throughput} | "
                     f"{of_copy} | {ratio} | {agreement} |")
    return "\n".join(lines)


def time_device(fn: Callable[[], object], device: torch.device, repeat: int = 10, warmup: int = 3,
                inner: int = 1, inference: bool = True) -> tuple[float, float, object]:
    """Like `time_call` (median and best seconds per call, last output), but on a CUDA device
    timed with events around `inner` back-to-back calls, since kernels run asynchronously."""
    if device.type != "cuda":
        median, best, output = time_call(lambda: [fn() for _ in range(inner)][-1], repeat, warmup, inference)
        return median / inner, best / inner, output
    output = None
    with torch.inference_mode() if inference else contextlib.nullcontext(), torch.cuda.device(device):
        for _ in range(warmup):  # also compiles and autotunes Triton kernels
            output = fn()
        torch.cuda.synchronize()
        samples = []
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                output = fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3 / inner)
    return statistics.median(samples), min(samples), output


@contextlib.contextmanager
def ops_forced(impl: str = "reference") -> Iterator[None]:
    """Every `clipsonic.ops` call inside goes to `impl` (``CLIPSONIC_OPS=<impl>``; "reference": the
    PyTorch references, "triton": the Triton kernels, gradients too)."""
    from clipsonic.ops.dispatch import ENVIRONMENT_VARIABLE

    previous = os.environ.get(ENVIRONMENT_VARIABLE)
    os.environ[ENVIRONMENT_VARIABLE] = impl
    try:
        yield
    finally:
        if previous is None:
            del os.environ[ENVIRONMENT_VARIABLE]
        else:
            os.environ[ENVIRONMENT_VARIABLE] = previous


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def bench_ops(device: str = "cuda", dtypes: Sequence[str] = ("fp16", "bf16"),
              lengths: Sequence[int] = (256, 512, 1024, 2048, 4096), batch: int = 4, heads: int = 16,
              head_dim: int = 64, causal: bool = False,
              norm_shapes: Sequence[tuple[int, ...]] = ((2, 128, 64, 128), (2, 512, 8, 16), (8, 256, 64, 256)),
              groups: int = 32, unet_preset: str | None = "paper", frames: int = 128, repeat: int = 10,
              warmup: int = 3, inner: int = 10, seed: int = 0) -> list[OpTiming]:
    """Our kernels against eager PyTorch on one device, per dtype in `dtypes` (fp32/fp16/bf16).

    Rows, in order (reference row first, ratio = reference seconds / ours, so > 1 is faster):
    - CUDA only: attention [batch, heads, L, head_dim] for L in `lengths`: torch's SDPA, then
      our Triton kernel; throughput in TFLOP/s (4 * B * H * L^2 * D, halved when causal).
    - group_norm + scale-shift + SiLU for x in `norm_shapes` ([B, C, *spatial], `groups`
      groups): a plain ``x.clone()`` (the copy bandwidth), eager PyTorch (F.group_norm, then
      x*(1+scale)+shift, then SiLU), then our fused kernel (Triton on CUDA, C++ on CPU);
      throughput in GB/s of x read plus y written, and as a fraction of the clone's.
    - unless `unet_preset` is None: one UNet forward (random weights, batch 2, 64 mels x
      `frames`) with ``CLIPSONIC_OPS=reference``, then with the default dispatch.
    Cases a device cannot run (attention and fp16 on CPU; a kernel that did not build) are
    skipped with a log message.
    """
    from clipsonic.runtime import resolve_dtype

    target = torch.device(device)
    if target.type != "cuda":
        log.info("bench ops: attention skipped on %s (the Triton kernel needs a CUDA device)", target.type)
    rows: list[OpTiming] = []
    for name in dtypes:
        dtype = resolve_dtype(name)
        if target.type == "cpu" and dtype == torch.float16:
            log.info("bench ops: fp16 skipped on CPU (the C++ kernels take float32 and bfloat16)")
            continue
        generator = torch.Generator(device=target).manual_seed(seed)
        if target.type == "cuda":
            for length in lengths:
                rows += _bench_attention(target, dtype, name, batch, heads, length, head_dim, causal, generator,
                                         repeat, warmup, inner)
        for shape in norm_shapes:
            rows += _bench_group_norm(target, dtype, name, shape, groups, generator, repeat, warmup, inner)
        if unet_preset is not None:
            rows += _bench_unet_step(target, dtype, name, unet_preset, frames, seed, repeat, warmup)
    return rows


def _bench_attention(device: torch.device, dtype: torch.dtype, dtype_name: str, batch: int, heads: int, length: int,
                     head_dim: int, causal: bool, generator: torch.Generator, repeat: int, warmup: int,
                     inner: int) -> list[OpTiming]:
    import torch.nn.functional as F

    from clipsonic import ops

    q, k, v = (torch.randn(batch, heads, length, head_dim, device=device, dtype=dtype, generator=generator)
               for _ in range(3))
    flops = 4 * batch * heads * length * length * head_dim / (2 if causal else 1)
    name = f"attention [{batch}, {heads}, {length}, {head_dim}]{' causal' if causal else ''}"
    ref, ref_best, ref_out = time_device(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                                         device, repeat, warmup, inner)
    ours, best, out = time_device(lambda: ops.attention(q, k, v, causal=causal, impl="triton"),
                                  device, repeat, warmup, inner)
    return [OpTiming(f"{name} (reference: torch SDPA)", batch, dtype_name, ref, ref_best, 1.0, 1.0,
                     flops / ref / 1e12, "TFLOP/s"),
            OpTiming(f"{name} (Triton)", batch, dtype_name, ours, best, ref / ours, _cosine(out, ref_out),
                     flops / ours / 1e12, "TFLOP/s")]


def _bench_group_norm(device: torch.device, dtype: torch.dtype, dtype_name: str, shape: tuple[int, ...],
                      groups: int, generator: torch.Generator, repeat: int, warmup: int,
                      inner: int) -> list[OpTiming]:
    import torch.nn.functional as F

    from clipsonic import ops
    from clipsonic.ops import group_norm_native

    impl, label = ("triton", "Triton") if device.type == "cuda" else ("cpp", "C++")
    if impl == "cpp" and group_norm_native.cpu_module() is None:
        log.info("bench ops: group_norm rows skipped (the C++ kernel did not build)")
        return []
    batch, channels = shape[:2]
    x = torch.randn(shape, device=device, dtype=dtype, generator=generator)
    # As in the UNet: fp32 norm parameters, scale/shift [B, C] in the activations' dtype.
    weight, bias = (torch.randn(channels, device=device, generator=generator) for _ in range(2))
    scale, shift = (0.1 * torch.randn(batch, channels, device=device, dtype=dtype, generator=generator)
                    for _ in range(2))
    extra = (1,) * (x.dim() - 2)

    def eager():
        h = F.group_norm(x, groups, weight.to(dtype), bias.to(dtype), 1e-5)
        return F.silu(h * (1 + scale.view(batch, channels, *extra)) + shift.view(batch, channels, *extra))

    gigabytes = 2 * x.numel() * x.element_size() / 1e9  # x read once, y written once
    name = f"group_norm+scale-shift+SiLU {list(shape)}, {groups} groups"
    copy, copy_best, _ = time_device(x.clone, device, repeat, warmup, inner)
    ref, ref_best, ref_out = time_device(eager, device, repeat, warmup, inner)
    ours, best, out = time_device(lambda: ops.group_norm(x, groups, weight, bias, 1e-5, scale=scale, shift=shift,
                                                         silu=True, impl=impl), device, repeat, warmup, inner)
    return [OpTiming(f"{name} (x.clone(): copy bandwidth)", batch, dtype_name, copy, copy_best, None, None,
                     gigabytes / copy, "GB/s", 1.0),
            OpTiming(f"{name} (reference: eager PyTorch)", batch, dtype_name, ref, ref_best, 1.0, 1.0,
                     gigabytes / ref, "GB/s", copy / ref),
            OpTiming(f"{name} ({label})", batch, dtype_name, ours, best, ref / ours, _cosine(out, ref_out),
                     gigabytes / ours, "GB/s", copy / ours)]


def _bench_unet_step(device: torch.device, dtype: torch.dtype, dtype_name: str, preset: str, frames: int, seed: int,
                     repeat: int, warmup: int) -> list[OpTiming]:
    from clipsonic.nn import set_precision
    from clipsonic.unet import UNet, UNetConfig

    torch.manual_seed(seed)
    unet = UNet(UNetConfig.preset(preset)).eval()
    random_weights_(unet)
    unet = set_precision(unet, dtype).to(device)
    multiple = unet.config.downsampling
    frames = -(-frames // multiple) * multiple
    generator = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(2, unet.config.in_channels, 64, frames, device=device, generator=generator)
    t = torch.tensor([500.0, 500.0], device=device)
    cond = torch.randn(2, unet.config.cond_dim, device=device, generator=generator)
    drop = torch.tensor([False, True], device=device)
    name = f"unet {preset} step, batch 2 x 64 x {frames}"
    with ops_forced("reference"):
        ref, ref_best, ref_out = time_device(lambda: unet(x, t, cond, drop), device, repeat, warmup)
    ours, best, out = time_device(lambda: unet(x, t, cond, drop), device, repeat, warmup)
    return [OpTiming(f"{name} (reference: CLIPSONIC_OPS=reference)", 2, dtype_name, ref, ref_best, 1.0, 1.0),
            OpTiming(f"{name} (clipsonic.ops)", 2, dtype_name, ours, best, ref / ours, _cosine(out, ref_out))]


def bench_preprocess(clip_preset: str = "paper", clips: int = 16, seconds: float = 8.0, workers: int = 2,
                     repeat: int = 1, seed: int = 0) -> list[Timing]:
    """`preprocess` on `clips` synthetic videos (224 px, 4 fps, 16 kHz AAC) with a random-weight CLIP:
    the plain path (decoding in the main process, fp32 CLIP) against ours (`workers` decoding
    processes beside a bf16 CLIP). The rows' names give clips per second."""
    import copy
    import itertools
    import shutil
    import tempfile
    from pathlib import Path

    from clipsonic.clip import CLIP, CLIPConfig
    from clipsonic.nn import set_precision
    from clipsonic.data.preprocess import PreprocessConfig, preprocess
    from clipsonic.demo.synthetic import make_demo_data

    torch.manual_seed(seed)
    clip32 = CLIP(CLIPConfig.preset(clip_preset)).eval()
    clip16 = set_precision(copy.deepcopy(clip32), torch.bfloat16)
    folder = Path(tempfile.mkdtemp(prefix="clipsonic-bench-"))
    try:
        per_class = -(-clips // 8)
        videos = make_demo_data(folder / "data", per_class, seed, (seconds, seconds), progress=False).videos
        files = sorted(videos.rglob("*.mp4"))[clips:]
        for extra in files:  # keep exactly `clips` videos
            extra.unlink()
        runs = itertools.count()  # every timed run writes a fresh dataset folder

        def run(clip, processes: int):
            return preprocess(videos, folder / f"out-{next(runs)}", clip, settings=PreprocessConfig(), workers=processes)

        rows = []
        reference, reference_best, _ = time_call(lambda: run(clip32, 0), repeat, warmup=0)
        label = f"preprocess {clips} x {seconds:g}-s videos, {clip_preset} CLIP"
        rows.append(Timing(f"{label}, decoding in-process (reference): {clips / reference:.2f} clips/s", clips, "fp32",
                           reference, reference_best, 1.0))
        ours, ours_best, _ = time_call(lambda: run(clip16, workers), repeat, warmup=0)
        rows.append(Timing(f"{label}, {workers} decoding processes: {clips / ours:.2f} clips/s", clips, "bf16", ours,
                           ours_best, reference / ours))
        return rows
    finally:
        shutil.rmtree(folder, ignore_errors=True)


CLAP_REFERENCE_SCRIPT = "benchmarks/clap_reference.py"  # in a source checkout, beside the package folder


def cpu_model() -> str:
    """The CPU's model name as lscpu gives it (what the benchmark tables name the machine by)."""
    import platform
    import subprocess

    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "unknown CPU")


def bench_clap(clips: int = 512, seconds: float = 4.0, batch: int = 16, repeat: int = 1,
               reference_python: str | os.PathLike | None = None, preset: str = "htsat-tiny",
               seed: int = 0) -> list[Timing]:
    """LAION-CLAP audio embeddings of `clips` noise clips of `seconds` at 48 kHz, `batch` at a
    time, with random weights of the `preset` model (default the full one, HTSAT-tiny with
    fusion): for timing, not for what the embeddings mean.

    With `reference_python`, an interpreter that has laion_clap 1.1.7 (the scratch environment
    of tests/fixtures/make_clap_fixtures.py), the first row is laion_clap's
    ``get_audio_embedding_from_data`` on the same weights and clips, run first in a subprocess of
    it (`CLAP_REFERENCE_SCRIPT`, which needs a source checkout) with as many threads as this
    process; otherwise our float32 path is the reference row. Then our `CLAP.embed_audio` in
    float32 and bfloat16: seconds for all clips (median of `repeat` passes after one untimed
    batch), speed-up against the reference and the lowest cosine of an embedding to the
    reference's."""
    import copy
    import json
    import subprocess
    import tempfile
    from pathlib import Path

    import numpy as np

    from clipsonic.clap import CLAP, CLAPConfig, set_clap_precision
    from clipsonic.errors import ClipsonicError

    if reference_python is not None and preset != "htsat-tiny":
        raise ClipsonicError(f"the laion_clap reference is the htsat-tiny model, not {preset}")
    torch.manual_seed(seed)
    model = random_weights_(CLAP(CLAPConfig.preset(preset)).eval())
    rate = model.config.sample_rate
    generator = torch.Generator().manual_seed(seed)
    gains = 10 ** (-torch.rand(clips, 1, generator=generator) * 2)  # -40 .. 0 dB
    wavs = 0.3 * gains * torch.randn(clips, round(seconds * rate), generator=generator).clamp(-3, 3)
    name = f"CLAP audio embedding, {clips} x {seconds:g}-s clips"
    rows, reference = [], None
    if reference_python is not None:
        script = Path(__file__).resolve().parents[1] / CLAP_REFERENCE_SCRIPT
        if not script.is_file():
            raise ClipsonicError(f"{script}: not found; the laion_clap reference runs from a source checkout of "
                                 f"clipsonic")
        with tempfile.TemporaryDirectory(prefix="clipsonic-bench-clap-") as folder:
            torch.save(model.state_dict(), Path(folder) / "weights.pt")
            np.save(Path(folder) / "clips.npy", wavs.numpy())
            done = subprocess.run([str(reference_python), str(script), folder, "--batch", str(batch), "--repeat",
                                   str(repeat), "--threads", str(torch.get_num_threads())],
                                  capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise ClipsonicError(f"the laion_clap reference failed under {reference_python}: {last}")
            info = json.loads((Path(folder) / "reference.json").read_text(encoding="utf-8"))
            reference = torch.from_numpy(np.load(Path(folder) / "reference.npy"))
        rows.append(Timing(f"{name} (reference: laion_clap {info['laion_clap']}, torch {info['torch']})", batch,
                           "fp32", statistics.median(info["seconds"]), min(info["seconds"]), 1.0, 1.0))

    def embed_all(clap: CLAP) -> torch.Tensor:
        return torch.cat([clap.embed_audio(wavs[start:start + batch], rate) for start in range(0, clips, batch)])

    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        clap = set_clap_precision(copy.deepcopy(model), dtype) if dtype != torch.float32 else model
        clap.embed_audio(wavs[:batch], rate)  # warm-up: oneDNN primitives, the allocator
        ours, best, out = time_call(lambda: embed_all(clap), repeat, warmup=0)
        if reference is None:  # no laion_clap run: our float32 pass is the reference
            reference = out
            rows.append(Timing(f"{name} (reference: clipsonic fp32)", batch, label, ours, best, 1.0, 1.0))
            continue
        cosine = torch.nn.functional.cosine_similarity(out.double(), reference.double()).min().item()
        rows.append(Timing(f"{name} (clipsonic)", batch, label, ours, best, rows[0].seconds / ours, cosine))
    return rows
