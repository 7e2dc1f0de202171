"""One GPU acceptance run: every CUDA/Triton kernel against its reference on the shapes the models
use, kernel speed against torch, and end-to-end speed; one JSON and one Markdown report.

On a lent H100/H200 (the device tool: 15 minutes of device time in all, so this stays under 8;
results come back from $OUT; run it with timeout_s=600)::

    PYTHONUNBUFFERED=1 timeout 540 python3 benchmarks/gpu_check.py --out "$OUT"

(no install needed: from a plain checkout it imports clipsonic and its ``csrc/`` from the
repository). Elsewhere ``python benchmarks/gpu_check.py --out gpu-report``. On CPU it runs the tiny presets (``--small``
is implied): the Triton kernels in Triton's interpreter when ``TRITON_INTERPRET=1`` is set before
it starts, and every row that needs CUDA reads "skipped: no CUDA device"::

    TRITON_INTERPRET=1 python benchmarks/gpu_check.py --small --out /tmp/gpu-check

What it does, in this order (the report is rewritten after each part, so a run stopped by its
timeout still leaves what it measured):

1. correctness: the shapes come from the models themselves: each (paper preset: the 121 M UNet
   training at batch 32 x 64 mels x 64 frames and sampling at 2 x 64 x 128, CLIP ViT-L/14 image
   and text, the prior, the 512-channel BigVGAN on 128 frames) runs once on the meta device while
   every `clipsonic.ops` call is recorded. Each recorded call is then run on random inputs of its
   exact shapes and strides, in float32 and bfloat16: the kernel's output (into a NaN-poisoned
   buffer where it takes one) against the float32 reference on the same rounded inputs, and for
   calls a model trains through, its gradients against the reference's, with the tolerances the
   tests state (`TOLERANCES`).
2. speed: device copy bandwidth and bf16 matrix rate; Triton attention against torch SDPA
   (TFLOP/s, head dims 64 and 128, full and causal); Triton GroupNorm + scale-shift + SiLU against
   eager PyTorch on every UNet activation shape (GB/s and % of a copy); the CUDA anti-aliased
   activation against its reference on the BigVGAN shapes; one guided UNet sampling step. The
   timing code is `clipsonic.bench`'s (`bench_ops`, `bench_anti_alias`, `time_device`).
3. end to end: UNet training steps/s (AdamW, bf16 autocast, as `clipsonic train --bf16`) with the
   reference ops, the default dispatch and the Triton kernels forced; the time of one 4-s sample
   with DDPM-1000 and DPM-Solver++ 25; CLIP ViT-L/14 images/s; BigVGAN's real-time factor.

Speed rows stop once `--budget-s` seconds have passed since the start (the rest read "skipped:
time budget"); correctness always runs in full. Exit status: 0 when no correctness check failed,
1 when one failed or raised, 2 when only a speed row raised.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("clipsonic") is None:  # a plain checkout, not installed
    sys.path.insert(0, str(ROOT))
if importlib.util.find_spec("clipsonic.csrc") is None:  # the extensions' sources: csrc/, as an install maps it
    _spec = importlib.util.spec_from_file_location("clipsonic.csrc", ROOT / "csrc" / "__init__.py",
                                                   submodule_search_locations=[str(ROOT / "csrc")])
    sys.modules["clipsonic.csrc"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["clipsonic.csrc"])

import torch  # noqa: E402

from clipsonic import bench, ops  # noqa: E402
from clipsonic.ops.anti_alias_reference import anti_alias_activation_reference, kaiser_sinc_filter  # noqa: E402
from clipsonic.ops.attention_reference import attention_reference  # noqa: E402
from clipsonic.ops.group_norm_reference import group_norm_reference  # noqa: E402

FORMAT, VERSION = "clipsonic-gpu-check", 1
JSON_NAME, MARKDOWN_NAME = "gpu-check.json", "gpu-check.md"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# (atol, rtol) of a kernel's output against the float32 reference on the same rounded inputs,
# as the tests state them: tests/test_ops_triton.py ATTENTION_TOLERANCE and NORM_TOLERANCE
# (its bf16 values allow for the interpreter's truncating bf16 rounding, so they hold on a GPU),
# tests/test_anti_alias_kernels.py::test_cuda_matches_reference (atol = rtol).
# tests/test_gpu_check.py::test_tolerances_are_the_tests_own fails when the two drift apart.
TOLERANCES = {
    ("attention", "fp32"): (2e-5, 2e-5), ("attention", "bf16"): (3e-2, 2e-2),
    ("group_norm", "fp32"): (2e-5, 2e-5), ("group_norm", "bf16"): (1e-2, 1.6e-2),
    ("anti_alias_activation", "fp32"): (2e-5, 2e-5), ("anti_alias_activation", "bf16"): (5e-2, 5e-2),
}
# Gradients against the reference's in the same dtype (the kernels' backward recomputes the
# reference): float32 as tests/test_ops_triton.py::test_*_gradients_match_the_reference; the
# tests state none for bf16, which takes the op's bf16 forward tolerance.
GRADIENT_TOLERANCE = {"fp32": (1e-5, 1e-5)}
TENSOR_ARGUMENTS = {"attention": ("q", "k", "v"), "group_norm": ("x", "weight", "bias", "scale", "shift"),
                    "anti_alias_activation": ("x", "up_filter", "down_filter", "alpha", "beta")}
DIFFERENTIABLE = {"attention": ("q", "k", "v"), "group_norm": ("x", "weight", "bias", "scale", "shift")}
NO_CUDA = "no CUDA device"
FAILURES_PRINTED = 12


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What the run builds and times. Preset ``full`` is the paper's; ``small`` keeps CPU runs short."""

    unet: str = "paper"
    mels: int = 64
    train_batch: int = 32
    train_frames: int = 64
    sample_frames: int = 128  # 4.1 s; sampling runs the guided batch of 2
    clip: str = "paper"
    clip_batch: int = 4  # correctness
    clip_speed_batch: int = 64
    prior: str = "paper"
    prior_batch: int = 2
    vocoder: str = "paper"
    vocoder_frames: int = 128
    vocoder_seconds: float = 4.0
    attention_lengths: tuple[int, ...] = (256, 1024, 4096)
    attention_batch: int = 4
    attention_width: int = 1024  # heads = width / head dim
    copy_elements: int = 2**28  # bf16: 512 MiB, several times the L2
    matmul_size: int = 8192
    train_steps: int = 10
    ddpm_steps: int = 1000
    dpm_steps: int = 25
    repeat: int = 10
    inner: int = 10


SIZES = {
    "full": Sizes(),
    "small": Sizes(unet="tiny", mels=16, train_batch=2, train_frames=16, sample_frames=32, clip="tiny", clip_batch=2,
                   clip_speed_batch=2, prior="tiny", vocoder="tiny", vocoder_frames=4, vocoder_seconds=0.25,
                   attention_lengths=(64,), attention_width=128, copy_elements=2**16, matmul_size=128, train_steps=2,
                   ddpm_steps=4, dpm_steps=2, repeat=2, inner=1),
}


# ------------------------------------------------------------------ the shapes the models use

Layout = tuple[tuple[int, ...], tuple[int, ...]]  # (shape, strides)


@dataclasses.dataclass(frozen=True)
class Case:
    """One distinct `clipsonic.ops` call of a model: its tensors' layouts and its other arguments."""

    model: str
    op: str
    tensors: tuple[tuple[str, Layout], ...]  # present tensor arguments, by name
    options: tuple[tuple[str, object], ...]  # causal / num_groups, eps, silu
    backward: bool  # the model trains through this call
    note: str = ""

    def layout(self, name: str) -> Layout | None:
        return dict(self.tensors).get(name)

    def option(self, name: str):
        return dict(self.options)[name]

    def describe(self) -> str:
        """The shapes (and the arguments that change the maths), for a report row."""
        shapes = dict(self.tensors)
        if self.op == "attention":
            q, k = shapes["q"][0], shapes["k"][0]
            text = f"q {list(q)}" + (f", k/v {list(k)}" if k != q else "")
            return text + (" causal" if self.option("causal") else "")
        extras = [name for name in ("scale", "shift") if name in shapes]
        if self.op == "group_norm":
            return (f"{list(shapes['x'][0])}, {self.option('num_groups')} groups"
                    + (" +scale-shift" if extras else "") + (" +SiLU" if self.option("silu") else ""))
        return f"{list(shapes['x'][0])}" + (" snakebeta" if "beta" in shapes else " snake")


def _layout(t: torch.Tensor) -> Layout:
    return tuple(t.shape), tuple(t.stride())


@contextlib.contextmanager
def _recording(calls: list[tuple[str, dict, dict, bool]]) -> Iterator[None]:
    """Within: every `clipsonic.ops` call a model makes is appended to `calls` as (op, tensors,
    options, has_bias) and computed by the reference (so it also works on the meta device)."""
    originals = {name: getattr(ops, name) for name in TENSOR_ARGUMENTS}

    def attention(q, k, v, causal=False, impl=None, bias=None, dropout=0.0):
        calls.append(("attention", dict(q=q, k=k, v=v), dict(causal=causal), bias is not None))
        return originals["attention"](q, k, v, causal=causal, impl="reference", bias=bias, dropout=dropout)

    def group_norm(x, num_groups, weight, bias, eps=1e-5, scale=None, shift=None, silu=False, impl=None):
        tensors = dict(x=x, weight=weight, bias=bias, scale=scale, shift=shift)
        calls.append(("group_norm", tensors, dict(num_groups=num_groups, eps=eps, silu=silu), False))
        return originals["group_norm"](x, num_groups, weight, bias, eps, scale=scale, shift=shift, silu=silu,
                                       impl="reference")

    def anti_alias_activation(x, up_filter, down_filter, alpha, beta=None, impl=None):
        tensors = dict(x=x, up_filter=up_filter, down_filter=down_filter, alpha=alpha, beta=beta)
        calls.append(("anti_alias_activation", tensors, {}, False))
        return originals["anti_alias_activation"](x, up_filter, down_filter, alpha, beta, impl="reference")

    replacements = dict(attention=attention, group_norm=group_norm, anti_alias_activation=anti_alias_activation)
    try:
        for name, function in replacements.items():
            setattr(ops, name, function)
        yield
    finally:
        for name, function in originals.items():
            setattr(ops, name, function)


PRIOR_NOTE = ("the prior adds a relative-position bias with its own mask (query i sees keys 0..i+1), so dispatch "
              "sends it to the reference; checked: the kernel on its q/k/v layouts, causal, without the bias")


def _cases_of(model: str, run: Callable[[], object], backward: bool) -> list[Case]:
    calls: list = []
    with _recording(calls):
        run()
    cases = []
    for op, tensors, options, has_bias in calls:
        note = ""
        if has_bias:  # the Triton kernel takes no bias: check the kernel on the layout, causal
            options, note = dict(options, causal=True), PRIOR_NOTE
        layouts = tuple((name, _layout(t)) for name, t in tensors.items() if t is not None)
        case = Case(model, op, layouts, tuple(sorted(options.items())), backward, note)
        if case not in cases:
            cases.append(case)
    return cases


def model_cases(sizes: Sizes) -> list[Case]:
    """Every distinct op call of the models at `sizes`, found by running them on the meta device."""
    from clipsonic.clip import CLIP, CLIPConfig
    from clipsonic.prior import PriorConfig, PriorNetwork
    from clipsonic.unet import UNet, UNetConfig
    from clipsonic.vocoder import BigVGAN, BigVGANConfig

    with torch.device("meta"):
        unet = UNet(UNetConfig.preset(sizes.unet))
        clip = CLIP(CLIPConfig.preset(sizes.clip)).eval()
        prior_config = PriorConfig.preset(sizes.prior)
        prior = PriorNetwork(prior_config.net).eval()
        vocoder = BigVGAN(BigVGANConfig.preset(sizes.vocoder)).eval()
        b, m, f = sizes.train_batch, sizes.mels, sizes.train_frames
        cond_dim, dim = unet.config.cond_dim, prior_config.net.dim
        resolution, context = clip.config.image_resolution, clip.config.context_length
        return [
            *_cases_of(f"unet train ({b} x {m} x {f})",
                       lambda: unet.train()(torch.randn(b, 1, m, f), torch.zeros(b), torch.randn(b, cond_dim),
                                            torch.zeros(b, dtype=torch.bool)), backward=True),
            *_cases_of(f"unet sample (2 x {m} x {sizes.sample_frames})",
                       lambda: unet.eval()(torch.randn(2, 1, m, sizes.sample_frames), torch.zeros(2),
                                           torch.randn(2, cond_dim), torch.tensor([False, True])), backward=False),
            *_cases_of("clip image",
                       lambda: clip.encode_image(torch.randn(sizes.clip_batch, 3, resolution, resolution)),
                       backward=False),
            *_cases_of("clip text", lambda: clip.encode_text(torch.zeros(sizes.clip_batch, context, dtype=torch.long)),
                       backward=False),
            *_cases_of("prior", lambda: prior(torch.randn(sizes.prior_batch, dim),
                                              torch.zeros(sizes.prior_batch, dtype=torch.long),
                                              torch.randn(sizes.prior_batch, dim),
                                              torch.randn(sizes.prior_batch, prior_config.net.max_text_len, dim)),
                       backward=False),
            *_cases_of(f"bigvgan ({sizes.vocoder_frames} frames)",
                       lambda: vocoder(torch.randn(1, vocoder.config.num_mels, sizes.vocoder_frames)), backward=False),
        ]


# ------------------------------------------------------------------ correctness

def _triton_attention(t: dict, options: dict, out: torch.Tensor | None = None) -> torch.Tensor:
    if out is None:
        return ops.attention(t["q"], t["k"], t["v"], causal=options["causal"], impl="triton")
    from clipsonic.ops import attention_triton

    # The tests' entry point that writes into a given (poisoned) buffer.
    return attention_triton._forward(t["q"], t["k"], t["v"], options["causal"], out=out)


def _triton_group_norm(t: dict, options: dict, out: torch.Tensor | None = None) -> torch.Tensor:
    args = (t["x"], options["num_groups"], t.get("weight"), t.get("bias"), options["eps"])
    extras = dict(scale=t.get("scale"), shift=t.get("shift"), silu=options["silu"])
    if out is None:
        return ops.group_norm(*args, **extras, impl="triton")
    from clipsonic.ops import group_norm_triton

    return group_norm_triton._forward(*args, **extras, out=out)


def _cuda_anti_alias(t: dict, options: dict, out: torch.Tensor | None = None) -> torch.Tensor:
    """The CUDA op allocates its own output; `check_case` frees a NaN-filled block of that size
    just before, which the caching allocator hands out again (a poisoned buffer, best effort)."""
    return ops.anti_alias_activation(t["x"], t["up_filter"], t["down_filter"], t["alpha"], t.get("beta"),
                                     impl="cuda")


@dataclasses.dataclass(frozen=True)
class Kernel:
    impl: str
    run: Callable[..., torch.Tensor]  # (tensors, options, out=None) -> output
    takes_out: bool


KERNELS = {"attention": Kernel("triton", _triton_attention, True),
           "group_norm": Kernel("triton", _triton_group_norm, True),
           "anti_alias_activation": Kernel("cuda", _cuda_anti_alias, False)}


def reference(op: str, t: dict, options: dict) -> torch.Tensor:
    """The PyTorch reference of `op` on tensors `t` (by argument name)."""
    if op == "attention":
        return attention_reference(t["q"], t["k"], t["v"], causal=options["causal"])
    if op == "group_norm":
        return group_norm_reference(t["x"], options["num_groups"], t.get("weight"), t.get("bias"), options["eps"],
                                    scale=t.get("scale"), shift=t.get("shift"), silu=options["silu"])
    return anti_alias_activation_reference(t["x"], t["up_filter"], t["down_filter"], t["alpha"], t.get("beta"))


def _reference_of(op: str, t: dict, options: dict) -> torch.Tensor:
    """`reference`, whose failure is reported as the reference's, not the kernel's."""
    try:
        return reference(op, t, options)
    except Exception as error:
        raise RuntimeError(f"the reference raised {type(error).__name__}: {error}") from error


def _unavailable(impl: str, device: torch.device) -> tuple[str, str] | None:
    """(status, reason) when `impl` cannot run here: skipped without the hardware, error when it
    should run and does not."""
    if device.type != "cuda":
        if impl == "cuda":
            return "skipped", NO_CUDA
        if os.environ.get("TRITON_INTERPRET") != "1":
            return "skipped", f"{NO_CUDA} (set TRITON_INTERPRET=1 to run the Triton kernels in its interpreter)"
    if impl == "triton" and importlib.util.find_spec("triton") is None:
        return "error", "triton is not installed"
    if impl == "cuda":
        from clipsonic.ops import anti_alias_native

        if anti_alias_native.cuda_module() is None:
            return "error", "the CUDA extension did not build (the warning above says why)"
    return None


def _random_base(layout: Layout, dtype: torch.dtype, device: torch.device, generator: torch.Generator,
                 kind: str) -> torch.Tensor:
    """The storage behind one tensor argument: as many elements as its strides reach."""
    shape, stride = layout
    size = 1 + sum((n - 1) * s for n, s in zip(shape, stride)) if all(shape) else 0
    if kind == "positive":  # snake's alpha and beta, as tests/test_anti_alias_kernels.py draws them
        values = torch.rand(size, generator=generator, device=device) + 0.5
    else:
        values = torch.randn(size, generator=generator, device=device)
        if kind == "activation":  # GroupNorm input, as tests/test_ops_triton.py draws it
            values = 2 * values + 0.5
    return values.to(dtype)


def _inputs(case: Case, dtype: torch.dtype, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """Fresh random storage per tensor argument, in the dtype the model gives it there: norm
    weights, filters and snake parameters stay float32, activations take `dtype`."""
    generator = torch.Generator(device=device).manual_seed(seed)
    bases = {}
    for name, layout in case.tensors:
        if name in ("up_filter", "down_filter"):
            taps = kaiser_sinc_filter(0.25, 0.3, layout[0][-1]).to(device)
            bases[name] = taps.reshape(-1)
            continue
        float32 = name in ("weight", "bias", "alpha", "beta")
        kind = "positive" if name in ("alpha", "beta") else "activation" if (case.op, name) == ("group_norm", "x") \
            else "normal"
        bases[name] = _random_base(layout, torch.float32 if float32 else dtype, device, generator, kind)
    return bases


def _views(case: Case, bases: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: bases[name].as_strided(*case.layout(name)) for name in bases}


def compare(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> dict:
    """How far `actual` is from `expected`: the largest |difference| / (atol + rtol |expected|)
    (passing is <= 1, as torch.testing.assert_close), the largest |difference|, the relative
    error ||difference|| / ||expected||, and how many elements are NaN/inf where `expected` is not."""
    if actual.shape != expected.shape:
        raise ValueError(f"output shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    actual, expected = actual.float(), expected.float()
    difference = (actual - expected).abs()
    bad = int((~torch.isfinite(actual) & torch.isfinite(expected)).sum())
    difference = difference.nan_to_num(nan=math.inf)
    worst = (difference / (atol + rtol * expected.abs())).max().item() if difference.numel() else 0.0
    norm = expected.norm().item()
    return {"worst_ratio": worst, "max_abs_error": difference.max().item() if difference.numel() else 0.0,
            "relative_error": (difference.norm().item() / norm) if norm else difference.norm().item(),
            "nonfinite": bad}


def _forward_errors(case: Case, dtype: torch.dtype, device: torch.device, kernel: Kernel, seed: int,
                    atol: float, rtol: float) -> dict:
    options = dict(case.options)
    views = _views(case, _inputs(case, dtype, device, seed))
    # The float32 reference on the same rounded inputs, as the tests compare.
    expected = _reference_of(case.op, {n: v.float() for n, v in views.items()}, options)
    with torch.no_grad():
        poisoned = torch.full(expected.shape, math.nan, dtype=dtype, device=device)
        if kernel.takes_out:
            if device.type == "cuda":  # compile and autotune first: every tile shape tried writes the buffer
                kernel.run(views, options, out=torch.empty_like(poisoned))
            actual = kernel.run(views, options, out=poisoned)
        else:
            del poisoned
            actual = kernel.run(views, options)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # a kernel's asynchronous error surfaces in this row
    errors = compare(actual, expected, atol, rtol)
    if actual.dtype != dtype:
        errors["problem"] = f"output dtype {actual.dtype}, expected {dtype}"
    return errors


def _backward_errors(case: Case, dtype: torch.dtype, device: torch.device, kernel: Kernel, seed: int,
                     atol: float, rtol: float) -> dict:
    options = dict(case.options)
    differentiable = [name for name in DIFFERENTIABLE[case.op] if case.layout(name) is not None]
    ours = _inputs(case, dtype, device, seed)
    theirs = {name: base.clone() for name, base in ours.items()}
    for bases in (ours, theirs):
        for name in differentiable:
            bases[name].requires_grad_()
    out = kernel.run(_views(case, ours), options)
    grad = torch.randn(out.shape, generator=torch.Generator(device=device).manual_seed(seed + 1),
                       device=device).to(out.dtype)
    out.backward(grad)
    _reference_of(case.op, _views(case, theirs), options).backward(grad)
    worst: dict = {}
    for name in differentiable:
        if ours[name].grad is None:
            return {"worst_ratio": math.inf, "max_abs_error": math.inf, "relative_error": math.inf, "nonfinite": 0,
                    "problem": f"no gradient for {name}"}
        errors = compare(ours[name].grad, theirs[name].grad, atol, rtol) | {"worst_tensor": name}
        if not worst or errors["worst_ratio"] > worst["worst_ratio"] or errors["nonfinite"]:
            worst = errors
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return worst


def check_case(case: Case, dtype_name: str, device: torch.device, direction: str = "forward",
               kernel: Kernel | None = None, seed: int | None = None) -> dict:
    """One correctness row: `case`'s kernel (or `kernel`, which tests inject) against the reference."""
    kernel = kernel or KERNELS[case.op]
    if direction == "forward":
        atol, rtol = TOLERANCES[(case.op, dtype_name)]
    else:
        atol, rtol = GRADIENT_TOLERANCE.get(dtype_name, TOLERANCES[(case.op, dtype_name)])
    row = {"model": case.model, "op": case.op, "impl": kernel.impl, "shape": case.describe(), "dtype": dtype_name,
           "direction": direction, "tolerance": {"atol": atol, "rtol": rtol}, "status": "", "reason": "",
           "worst_ratio": None, "max_abs_error": None, "relative_error": None, "seconds": None, "note": case.note}
    blocked = _unavailable(kernel.impl, device)
    if blocked is not None:
        row["status"], row["reason"] = blocked
        return row
    if seed is None:  # fresh inputs per row, the same on every run
        seed = zlib.crc32(repr((case, dtype_name, direction)).encode())
    measure = _forward_errors if direction == "forward" else _backward_errors
    started = time.perf_counter()
    try:
        errors = measure(case, DTYPES[dtype_name], device, kernel, seed, atol, rtol)
    except Exception as error:  # a kernel that raises is a failed check: report it, go on
        row["status"], row["reason"] = "error", f"{type(error).__name__}: {error}".splitlines()[0][:300]
        row["seconds"] = time.perf_counter() - started
        return row
    row["seconds"] = time.perf_counter() - started
    row.update({key: errors[key] for key in ("worst_ratio", "max_abs_error", "relative_error")})
    problems = [errors["problem"]] if "problem" in errors else []
    if errors["nonfinite"]:
        problems.append(f"{errors['nonfinite']} elements NaN/inf (unwritten?) where the reference is finite")
    if errors["worst_ratio"] > 1:
        where = f" in d{errors['worst_tensor']}" if "worst_tensor" in errors else ""
        problems.append(f"max |error| {errors['max_abs_error']:.3g}{where} is {errors['worst_ratio']:.3g}x "
                        f"the allowed atol + rtol |reference|")
    row["status"] = "fail" if problems else "pass"
    row["reason"] = "; ".join(problems)
    return row


@contextlib.contextmanager
def _exact_float32() -> Iterator[None]:
    """No TF32 inside: cuDNN may run the float32 reference's convolutions (the anti-aliased
    activation's) in TF32 by default, 1e-3 off where the tolerance is 2e-5."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def correctness_rows(cases: Sequence[Case], device: torch.device, dtypes: Sequence[str] = tuple(DTYPES),
                     kernels: dict[str, Kernel] | None = None) -> list[dict]:
    """Every case in every dtype, forward, then backward where the model trains through it."""
    kernels = {**KERNELS, **(kernels or {})}
    rows = []
    with _exact_float32():
        for case in cases:
            for dtype_name in dtypes:
                directions = ("forward", "backward") if case.backward and case.op in DIFFERENTIABLE else ("forward",)
                for direction in directions:
                    rows.append(check_case(case, dtype_name, device, direction, kernels[case.op]))
    return rows


# ------------------------------------------------------------------ speed and end to end

@dataclasses.dataclass(frozen=True)
class SpeedGroup:
    section: str
    label: str
    run: Callable[[], list[dict]]


def _timing_row(section: str, timing: bench.Timing, value: float | None = None, value_unit: str = "") -> dict:
    return {"section": section, "name": timing.name, "dtype": timing.dtype, "status": "measured", "reason": "",
            "median_ms": 1e3 * timing.seconds, "best_ms": 1e3 * timing.best,
            "throughput": getattr(timing, "throughput", None), "unit": getattr(timing, "unit", ""),
            "of_copy": getattr(timing, "of_copy", None), "ratio": timing.ratio, "agreement": timing.agreement,
            "value": value, "value_unit": value_unit}


def _unmeasured_row(section: str, name: str, status: str, reason: str) -> dict:
    return {"section": section, "name": name, "dtype": "", "status": status, "reason": reason, "median_ms": None,
            "best_ms": None, "throughput": None, "unit": "", "of_copy": None, "ratio": None, "agreement": None,
            "value": None, "value_unit": ""}


def _error_row(section: str, name: str, error: Exception) -> dict:
    traceback.print_exc()
    return _unmeasured_row(section, name, "error", f"{type(error).__name__}: {error}".splitlines()[0][:300])


def _ceilings(device: torch.device, sizes: Sizes) -> list[dict]:
    """The two ceilings METHOD.md asks for: a large device-to-device copy and a bf16 matrix product."""
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(sizes.copy_elements, generator=generator, device=device, dtype=torch.bfloat16)
    seconds, best, _ = bench.time_device(x.clone, device, sizes.repeat, 3)
    gigabytes = 2 * x.numel() * x.element_size() / 1e9  # read + written
    copy = bench.OpTiming(f"x.clone(), {x.numel() * 2 / 2**20:.0f} MiB bf16", 1, "bf16", seconds, best,
                          throughput=gigabytes / seconds, unit="GB/s")
    n = sizes.matmul_size
    a, b = (torch.randn(n, n, generator=generator, device=device, dtype=torch.bfloat16) for _ in range(2))
    seconds, best, _ = bench.time_device(lambda: a @ b, device, sizes.repeat, 3)
    matmul = bench.OpTiming(f"matmul {n}x{n}x{n} (random data)", 1, "bf16", seconds, best,
                            throughput=2 * n**3 / seconds / 1e12, unit="TFLOP/s")
    return [_timing_row("ceilings", copy), _timing_row("ceilings", matmul)]


def _attention_speed(device: torch.device, sizes: Sizes, head_dim: int, causal: bool) -> list[dict]:
    rows = bench.bench_ops(str(device), dtypes=("bf16",), lengths=sizes.attention_lengths, batch=sizes.attention_batch,
                           heads=sizes.attention_width // head_dim, head_dim=head_dim, causal=causal, norm_shapes=(),
                           unet_preset=None, repeat=sizes.repeat, inner=sizes.inner)
    return [_timing_row("attention", row) for row in rows]


def _group_norm_speed(device: torch.device, sizes: Sizes, cases: Sequence[Case]) -> list[dict]:
    shapes, groups = [], set()
    for case in cases:
        if case.op == "group_norm" and case.model.startswith("unet"):
            groups.add(case.option("num_groups"))
            if case.layout("x")[0] not in shapes:
                shapes.append(case.layout("x")[0])
    rows = bench.bench_ops(str(device), dtypes=("bf16",), lengths=(), norm_shapes=shapes, groups=groups.pop(),
                           unet_preset=None, repeat=sizes.repeat, inner=sizes.inner)
    return [_timing_row("group_norm", row) for row in rows]


def _anti_alias_speed(device: torch.device, sizes: Sizes, cases: Sequence[Case]) -> list[dict]:
    shapes = list(dict.fromkeys(case.layout("x")[0] for case in cases if case.op == "anti_alias_activation"))
    rows = bench.bench_anti_alias(str(device), shapes, ("fp32", "bf16"), repeat=sizes.repeat, warmup=3,
                                  inner=sizes.inner)
    return [_timing_row("anti_alias_activation", row) for row in rows]


def _unet_step_speed(device: torch.device, sizes: Sizes) -> list[dict]:
    rows = bench.bench_ops(str(device), dtypes=("bf16",), lengths=(), norm_shapes=(), unet_preset=sizes.unet,
                           frames=sizes.sample_frames, repeat=sizes.repeat)
    return [_timing_row("unet step", row) for row in rows]


OPS_VARIANTS = (("reference", "CLIPSONIC_OPS=reference"), (None, "default dispatch"),
                ("triton", "CLIPSONIC_OPS=triton"))


def _forced(impl: str | None):
    return bench.ops_forced(impl) if impl is not None else contextlib.nullcontext()


def _training_speed(device: torch.device, sizes: Sizes) -> list[dict]:
    """Steps/s of `clipsonic train --bf16`'s step (bf16 autocast, AdamW) on random data. The
    default dispatch sends calls that need gradients to the reference; CLIPSONIC_OPS=triton runs
    the Triton forward kernels there too (their backward recomputes the reference)."""
    from clipsonic.diffusion import GaussianDiffusion
    from clipsonic.unet import UNet, UNetConfig

    torch.manual_seed(0)
    unet = UNet(UNetConfig.preset(sizes.unet)).to(device).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    diffusion = GaussianDiffusion.cosine(4000)
    generator = torch.Generator().manual_seed(0)
    b = sizes.train_batch
    x0 = torch.randn(b, 1, sizes.mels, sizes.train_frames, generator=generator).to(device)
    cond = torch.randn(b, unet.config.cond_dim, generator=generator).to(device)
    drop = (torch.rand(b, generator=generator) < 0.1).to(device)

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = diffusion.training_loss(lambda xt, t: unet(xt, t, cond, drop), x0, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    rows, reference_seconds = [], None
    name = f"unet {sizes.unet} training step, batch {b} x {sizes.mels} x {sizes.train_frames}, bf16 autocast + AdamW"
    for impl, label in OPS_VARIANTS:
        try:  # each variant on its own: one that raises must not lose the others
            with _forced(impl):
                seconds, best, _ = bench.time_device(step, device, sizes.train_steps, warmup=2, inference=False)
        except Exception as error:
            rows.append(_error_row("training", f"{name} ({label})", error))
            continue
        if impl == "reference":
            reference_seconds = seconds
        ratio = reference_seconds / seconds if reference_seconds else None
        timing = bench.Timing(f"{name} ({label})", b, "bf16", seconds, best, ratio)
        rows.append(_timing_row("training", timing, 1 / seconds, "steps/s"))
    return rows


def _sampling_speed(device: torch.device, sizes: Sizes) -> list[dict]:
    """Seconds for one guided 4-s mel (batch 2 x mels x frames per step, w = 1.5), bf16 UNet."""
    from clipsonic.diffusion import GaussianDiffusion, classifier_free_guidance
    from clipsonic.nn import set_precision
    from clipsonic.unet import UNet, UNetConfig

    torch.manual_seed(0)
    unet = set_precision(bench.random_weights_(UNet(UNetConfig.preset(sizes.unet))), torch.bfloat16).to(device).eval()
    diffusion = GaussianDiffusion.cosine(4000)
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, unet.config.cond_dim, generator=generator).to(device)
    noise = torch.randn(1, 1, sizes.mels, sizes.sample_frames, generator=generator).to(device)
    guided = classifier_free_guidance(unet, query, 1.5)
    seconds_of_audio = sizes.sample_frames * 512 / 16000
    rows = []
    runs = ((None, "ddpm", sizes.ddpm_steps, 1, 0), (None, "dpm++", sizes.dpm_steps, 3, 1),
            ("reference", "dpm++", sizes.dpm_steps, 3, 1))
    bench.time_device(lambda: diffusion.sample(guided, noise, "dpm++", sizes.dpm_steps), device, 1, 1)  # compile
    for impl, sampler, steps, repeat, warmup in runs:
        label = "CLIPSONIC_OPS=reference" if impl else "default dispatch"
        title = "DDPM" if sampler == "ddpm" else "DPM-Solver++"
        name = f"{seconds_of_audio:.1f}-s sample, {title} {steps} steps, guided ({label})"
        try:
            with _forced(impl):
                seconds, best, _ = bench.time_device(
                    lambda: diffusion.sample(guided, noise, sampler, steps, generator=torch.Generator().manual_seed(0)),
                    device, repeat, warmup)
        except Exception as error:
            rows.append(_error_row("sampling", name, error))
            continue
        rows.append(_timing_row("sampling", bench.Timing(name, 1, "bf16", seconds, best), seconds, "s per sample"))
    return rows


def _clip_speed(device: torch.device, sizes: Sizes) -> list[dict]:
    from clipsonic.clip import CLIP, CLIPConfig
    from clipsonic.nn import set_precision

    torch.manual_seed(0)
    clip = set_precision(CLIP(CLIPConfig.preset(sizes.clip)), torch.bfloat16).to(device).eval()
    size, batch = clip.config.image_resolution, sizes.clip_speed_batch
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    rows, reference_seconds = [], None
    for impl, label in OPS_VARIANTS[:2]:
        name = f"clip {sizes.clip} encode_image, batch {batch} ({label})"
        try:
            with _forced(impl):
                seconds, best, _ = bench.time_device(lambda: clip.encode_image(pixels), device, sizes.repeat, 3)
        except Exception as error:
            rows.append(_error_row("clip", name, error))
            continue
        if impl == "reference":
            reference_seconds = seconds
        ratio = reference_seconds / seconds if reference_seconds else None
        rows.append(_timing_row("clip", bench.Timing(name, batch, "bf16", seconds, best, ratio), batch / seconds,
                                "images/s"))
    return rows


def _vocoder_speed(device: torch.device, sizes: Sizes) -> list[dict]:
    """BigVGAN on `vocoder_seconds` of audio; value = seconds of audio per second (x real time)."""
    rows = bench.bench_vocoder((sizes.vocoder,), sizes.vocoder_seconds, sizes.repeat, device=str(device),
                               activation_shapes=())
    return [_timing_row("bigvgan", row, sizes.vocoder_seconds / row.seconds, "x real time") for row in rows]


def speed_groups(device: torch.device, sizes: Sizes, cases: Sequence[Case]) -> list[SpeedGroup]:
    """Every speed and end-to-end measurement, as groups that each make one or more rows."""
    attention = {d: [SpeedGroup("attention", f"Triton attention vs torch SDPA, head dim {d}, "
                                              f"{'causal' if c else 'full'}, L in {list(sizes.attention_lengths)}",
                                 lambda d=d, c=c: _attention_speed(device, sizes, d, c)) for c in (False, True)]
                 for d in (64, 128)}
    return [  # what the models run first; head dim 128 (no model here uses it) last
        SpeedGroup("ceilings", "device copy bandwidth and bf16 matrix rate", lambda: _ceilings(device, sizes)),
        *attention[64],
        SpeedGroup("group_norm", "Triton GroupNorm + scale-shift + SiLU vs eager, every UNet activation shape",
                   lambda: _group_norm_speed(device, sizes, cases)),
        SpeedGroup("anti_alias_activation", "CUDA anti-aliased activation vs reference, BigVGAN shapes",
                   lambda: _anti_alias_speed(device, sizes, cases)),
        SpeedGroup("unet step", f"guided UNet step, 2 x 64 x {sizes.sample_frames}, ours vs reference ops",
                   lambda: _unet_step_speed(device, sizes)),
        SpeedGroup("training", f"UNet training steps/s, batch {sizes.train_batch} x {sizes.train_frames} frames, bf16",
                   lambda: _training_speed(device, sizes)),
        SpeedGroup("sampling", f"{sizes.sample_frames * 512 / 16000:.1f}-s sample time: DDPM-{sizes.ddpm_steps} "
                               f"and DPM-Solver++ {sizes.dpm_steps}",
                   lambda: _sampling_speed(device, sizes)),
        SpeedGroup("clip", f"CLIP {sizes.clip} images/s, batch {sizes.clip_speed_batch}",
                   lambda: _clip_speed(device, sizes)),
        SpeedGroup("bigvgan", f"BigVGAN {sizes.vocoder} real-time factor, {sizes.vocoder_seconds:g} s",
                   lambda: _vocoder_speed(device, sizes)),
        *attention[128],
    ]


def speed_rows(groups: Sequence[SpeedGroup], device: torch.device, deadline: float,
               on_rows: Callable[[list[dict]], None] = lambda rows: None) -> list[dict]:
    """Run each group on CUDA until `deadline` (time.monotonic()); elsewhere each is one skipped row."""
    rows: list[dict] = []
    for group in groups:
        if device.type != "cuda":
            rows.append(_unmeasured_row(group.section, group.label, "skipped", NO_CUDA))
        elif time.monotonic() > deadline:
            rows.append(_unmeasured_row(group.section, group.label, "skipped", "time budget spent (--budget-s)"))
        else:
            print(f"speed: {group.label}", flush=True)
            try:
                rows += group.run()
            except Exception as error:  # one broken measurement must not lose the others
                rows.append(_error_row(group.section, group.label, error))
        on_rows(rows)
    return rows


# ------------------------------------------------------------------ the report

def _command_output(*command: str) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _git_commit() -> str | None:
    """The checkout's commit, "+changes" when its files differ from it (None without git)."""
    commit = _command_output("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    if commit and _command_output("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"):
        commit += "+changes"
    return commit


def environment(device: torch.device, mode: str, mode_reason: str) -> dict:
    lscpu = _command_output("lscpu") or ""
    cpu = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), None)
    smi = _command_output("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
    try:
        triton_version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton_version = None
    cuda = device.type == "cuda"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if cuda else f"{device.type} ({NO_CUDA})",
        "nvidia_smi": smi, "driver": smi.split(",")[1].strip() if smi and smi.count(",") >= 2 else None,
        "cuda": torch.version.cuda, "torch": torch.__version__, "triton": triton_version,
        "python": platform.python_version(), "cpu": cpu or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "triton_interpreter": os.environ.get("TRITON_INTERPRET") == "1",
        "clipsonic_ops": os.environ.get("CLIPSONIC_OPS"), "git": _git_commit(),
        "mode": mode, "mode_reason": mode_reason, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def summary(correctness: Sequence[dict], speed: Sequence[dict]) -> dict:
    def count(rows, statuses):
        return {status: sum(row["status"] == status for row in rows) for status in statuses}

    checks = count(correctness, ("pass", "fail", "error", "skipped"))
    return {"passed": checks["fail"] == 0 and checks["error"] == 0, "correctness": checks,
            "speed": count(speed, ("measured", "skipped", "error"))}


def _number(value, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def markdown(report: dict) -> str:
    env, result = report["environment"], report["summary"]
    checks = result["correctness"]
    verdict = ("PASSED: no correctness check failed" if result["passed"] else "FAILED: some correctness check "
               "failed or raised (exit status 1)")
    lines = [f"# GPU check ({env['date']})", "",
             f"**{verdict}** — {checks['pass']} passed, {checks['fail']} failed, {checks['error']} raised, "
             f"{checks['skipped']} skipped; speed rows: {result['speed']['measured']} measured, "
             f"{result['speed']['skipped']} skipped, {result['speed']['error']} raised.", "",
             "| environment | |", "|---|---|"]
    for key in ("device", "nvidia_smi", "cuda", "torch", "triton", "python", "cpu", "cpu_count", "torch_threads",
                "triton_interpreter", "clipsonic_ops", "git", "mode", "mode_reason", "command", "seconds"):
        lines.append(f"| {key} | {'' if env.get(key) is None else env[key]} |")
    lines += ["", "## Correctness (kernel vs `impl=\"reference\"`)", "",
              "Forward: against the float32 reference on the same rounded inputs; backward: gradients against the "
              "reference's in the same dtype. Worst = max |error| / (atol + rtol |reference|), passing at <= 1.", "",
              "| model | op | impl | shape | dtype | direction | atol / rtol | worst | max abs error | rel. error | "
              "status |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["correctness"]:
        status = row["status"] + (f": {row['reason']}" if row["reason"] else "")
        tolerance = f"{row['tolerance']['atol']:g} / {row['tolerance']['rtol']:g}"
        lines.append(f"| {row['model']} | {row['op']} | {row['impl']} | {row['shape']} | {row['dtype']} | "
                     f"{row['direction']} | {tolerance} | {_number(row['worst_ratio'])} | "
                     f"{_number(row['max_abs_error'])} | {_number(row['relative_error'])} | {status} |")
    notes = sorted({row["note"] for row in report["correctness"] if row["note"]})
    lines += [""] + [f"Note: {note}." for note in notes]
    lines += ["", "## Speed and end to end (GPU columns; empty where not measured)", "",
              "| section | benchmark | dtype | median ms | best ms | throughput | % of copy | vs reference | "
              "cosine vs reference | value | status |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["speed"]:
        status = row["status"] + (f": {row['reason']}" if row["reason"] else "")
        throughput = "" if row["throughput"] is None else f"{row['throughput']:.1f} {row['unit']}"
        of_copy = "" if row["of_copy"] is None else f"{100 * row['of_copy']:.0f}%"
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        agreement = "" if row["agreement"] is None else f"{row['agreement']:.5f}"
        value = "" if row["value"] is None else f"{row['value']:.4g} {row['value_unit']}"
        lines.append(f"| {row['section']} | {row['name']} | {row['dtype']} | {_number(row['median_ms'], 4)} | "
                     f"{_number(row['best_ms'], 4)} | {throughput} | {of_copy} | {ratio} | {agreement} | {value} | "
                     f"{status} |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> None:
    from clipsonic.fileio import write_json_atomic, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / JSON_NAME, report)
    write_text_atomic(out / MARKDOWN_NAME, markdown(report))


def main(argv: Sequence[str] | None = None, kernels: dict[str, Kernel] | None = None) -> int:
    """Run the check and write the report; `kernels` replaces implementations (tests break one)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help=f"folder for {JSON_NAME} and {MARKDOWN_NAME}")
    parser.add_argument("--small", action="store_true", help="tiny presets and sizes (implied without CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--parts", nargs="+", choices=("correctness", "speed"), default=["correctness", "speed"],
                        help="what to run (speed includes the end-to-end rows)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="seconds after the start past which no further speed group starts")
    args = parser.parse_args(argv)
    started = time.monotonic()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    mode, reason = ("small", "--small") if args.small else ("full", "")
    if device.type != "cuda" and not args.small:
        mode, reason = "small", f"{NO_CUDA}: the tiny presets"
    sizes = SIZES[mode]
    report = {"format": FORMAT, "version": VERSION, "environment": environment(device, mode, reason),
              "sizes": dataclasses.asdict(sizes), "summary": {}, "correctness": [], "speed": []}

    def save() -> None:
        report["summary"] = summary(report["correctness"], report["speed"])
        report["environment"]["seconds"] = round(time.monotonic() - started, 1)
        write_report(args.out, report)

    print(f"gpu check: {report['environment']['device']}, {mode} sizes, report in {args.out}", flush=True)
    cases = model_cases(sizes)
    if "correctness" in args.parts:
        for model in dict.fromkeys(case.model for case in cases):  # a report after each model
            rows = correctness_rows([case for case in cases if case.model == model], device, kernels=kernels)
            report["correctness"] += rows
            save()
            counts = {status: sum(row["status"] == status for row in rows) for status in ("pass", "fail", "error")}
            print(f"correctness: {model}: {counts['pass']} passed, {counts['fail']} failed, {counts['error']} raised, "
                  f"{len(rows) - sum(counts.values())} skipped ({time.monotonic() - started:.0f} s)", flush=True)
    if "speed" in args.parts:
        def progress(rows: list[dict]) -> None:
            report["speed"] = rows
            save()

        speed_rows(speed_groups(device, sizes, cases), device, started + args.budget_s, progress)
    save()
    result = report["summary"]
    # The device tool returns the last 12,000 characters of the output: the speed table, then the
    # failed checks, and the verdict with the environment last.
    text = markdown(report)
    print("## Speed" + text.split("\n## Speed", 1)[-1])
    failed = [row for row in report["correctness"] if row["status"] in ("fail", "error")]
    for row in failed[:FAILURES_PRINTED]:
        print(f"FAILED {row['model']} {row['op']} {row['shape']} {row['dtype']} {row['direction']}: {row['reason']}")
    if len(failed) > FAILURES_PRINTED:
        print(f"... and {len(failed) - FAILURES_PRINTED} more failed rows (all in {args.out / MARKDOWN_NAME})")
    print(text.split("\n## Correctness")[0], flush=True)
    if not result["passed"]:
        return 1
    return 2 if result["speed"]["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
