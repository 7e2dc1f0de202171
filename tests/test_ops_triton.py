"""The Triton kernels (attention, fused GroupNorm) against their references, and the dispatch to them.

On CPU the kernels run in Triton's interpreter, which must be on before they are defined: the
variable is set here, before anything imports the kernel modules (CI also sets it).
"""

import os

os.environ["TRITON_INTERPRET"] = "1"

import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed")

from clipsonic import bench, ops  # noqa: E402
from clipsonic.ops import attention_triton, dispatch, group_norm_triton  # noqa: E402
from clipsonic.ops.attention_reference import attention_reference  # noqa: E402
from clipsonic.ops.group_norm_reference import group_norm_reference  # noqa: E402

if not (attention_triton.INTERPRETED and group_norm_triton.INTERPRETED):
    raise RuntimeError("the Triton kernels were defined before TRITON_INTERPRET=1 was set; run these tests "
                       "with TRITON_INTERPRET=1 in the environment")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Against a float32 reference on the same (rounded) inputs. bf16 is loose because the
# interpreter rounds float32 -> bfloat16 by truncation (a GPU rounds to nearest): up to 1 ulp.
ATTENTION_TOLERANCE = {"fp32": dict(atol=2e-5, rtol=2e-5), "fp16": dict(atol=3e-3, rtol=3e-3),
                       "bf16": dict(atol=3e-2, rtol=2e-2)}
NORM_TOLERANCE = {"fp32": dict(atol=2e-5, rtol=2e-5), "fp16": dict(atol=2e-3, rtol=2e-3),
                  "bf16": dict(atol=1e-2, rtol=1.6e-2)}


def qkv(batch, heads, queries, keys, dim, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, queries, dim, generator=generator).to(dtype)
    k = torch.randn(batch, heads, keys, dim, generator=generator).to(dtype)
    v = torch.randn(batch, heads, keys, dim, generator=generator).to(dtype)
    return q, k, v


# (Lq, Lk, head dim): every supported head dim, single tokens, ragged tails, Lq != Lk both
# ways (causal with Lq != Lk is top-left aligned, as the reference), a non-power-of-2 dim.
ATTENTION_CASES = [(1, 1, 32), (17, 17, 64), (100, 37, 96), (37, 100, 128), (33, 70, 48)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("queries,keys,dim", ATTENTION_CASES)
def test_attention_matches_reference_and_writes_every_element(queries, keys, dim, causal, dtype):
    q, k, v = qkv(2, 2, queries, keys, dim, DTYPES[dtype], seed=queries * 1000 + keys)
    out = torch.full_like(q, float("nan"))  # poisoned: an element the kernel skips stays NaN
    attention_triton._forward(q, k, v, causal, out=out)
    expected = attention_reference(q.float(), k.float(), v.float(), causal=causal)
    torch.testing.assert_close(out.float(), expected, **ATTENTION_TOLERANCE[dtype])


def test_attention_takes_strided_inputs_and_outputs():
    """The UNet's layout: q, k, v are views of one [B, T, heads, 3, D] tensor; the output may be strided."""
    generator = torch.Generator().manual_seed(1)
    qkv_tokens = torch.randn(2, 45, 3, 3, 40, generator=generator)  # [B, T, heads, q/k/v, D]
    q, k, v = qkv_tokens.permute(3, 0, 2, 1, 4).unbind(0)  # each [B, heads, T, D], not contiguous
    out = torch.full((2, 45, 3, 40), float("nan")).transpose(1, 2)  # [B, heads, T, D] view of [B, T, heads, D]
    attention_triton._forward(q, k, v, False, out=out)
    torch.testing.assert_close(out, attention_reference(q, k, v), **ATTENTION_TOLERANCE["fp32"])


@pytest.mark.parametrize("causal", [False, True])
def test_attention_gradients_match_the_reference(causal):
    inputs = [t.requires_grad_() for t in qkv(1, 2, 19, 23, 32, torch.float32, seed=3)]
    reference_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    grad = torch.randn(1, 2, 19, 32, generator=torch.Generator().manual_seed(4))
    out = ops.attention(*inputs, causal=causal, impl="triton")
    out.backward(grad)
    attention_reference(*reference_inputs, causal=causal).backward(grad)
    torch.testing.assert_close(out, attention_reference(*reference_inputs, causal=causal), atol=2e-5, rtol=2e-5)
    for ours, expected in zip(inputs, reference_inputs):
        torch.testing.assert_close(ours.grad, expected.grad, atol=1e-5, rtol=1e-5)


def test_attention_refuses_what_the_kernel_does_not_cover():
    q, k, v = qkv(1, 1, 4, 4, 160, torch.float32)
    with pytest.raises(ValueError, match="head dim 160 > 128"):
        ops.attention(q, k, v, impl="triton")
    q, k, v = qkv(1, 1, 4, 4, 32, torch.float32)
    with pytest.raises(ValueError, match="neither bias nor dropout"):
        ops.attention(q, k, v, impl="triton", bias=torch.zeros(4, 4))
    with pytest.raises(ValueError, match="dtypes"):
        ops.attention(q.double(), k.double(), v.double(), impl="triton")


def norm_inputs(shape, groups, dtype, channels_last=False, seed=0, mean=0.0):
    generator = torch.Generator().manual_seed(seed)
    batch, channels = shape[:2]
    x = (mean + 2 * torch.randn(shape, generator=generator) + 0.5).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight, bias = torch.randn(channels, generator=generator), torch.randn(channels, generator=generator)
    # scale and shift as the UNet makes them: halves of one [B, 2C] projection, in x's dtype.
    scale, shift = torch.randn(batch, 2 * channels, generator=generator).to(dtype).chunk(2, dim=1)
    return x, weight, bias, scale, shift


def expected_norm(x, groups, weight, bias, scale=None, shift=None, silu=False, eps=1e-5):
    """The float32 reference on the same rounded inputs."""
    as32 = [None if t is None else t.float() for t in (weight, bias, scale, shift)]
    return group_norm_reference(x.float(), groups, as32[0], as32[1], eps, scale=as32[2], shift=as32[3], silu=silu)


# (shape, groups, channels-last): 2-D and 1-D spatial, channel groups of 3 and 2 (not powers
# of 2), no spatial dims, 3-D spatial, channels-last.
NORM_CASES = [((2, 12, 7, 9), 4, False), ((2, 12, 7, 9), 4, True), ((2, 10, 53), 5, False),
              ((3, 8), 4, False), ((1, 4, 3, 5, 6), 2, False)]


@pytest.mark.parametrize("plan", ["fused", "split"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,groups,channels_last", NORM_CASES)
def test_group_norm_matches_reference_and_writes_every_element(shape, groups, channels_last, dtype, plan):
    x, weight, bias, scale, shift = norm_inputs(shape, groups, DTYPES[dtype], channels_last, seed=len(shape))
    out = torch.full_like(x, float("nan"))
    group_norm_triton._forward(x, groups, weight, bias, 1e-5, scale, shift, True, out=out,
                               fused_limit=0 if plan == "split" else group_norm_triton.FUSED_LIMIT)
    expected = expected_norm(x, groups, weight, bias, scale, shift, silu=True)
    torch.testing.assert_close(out.float(), expected, **NORM_TOLERANCE[dtype])


@pytest.mark.parametrize("extras", ["plain", "affine", "scale", "shift", "silu", "scale_1c"])
def test_group_norm_optional_parts(extras):
    x, weight, bias, scale, shift = norm_inputs((2, 6, 11, 4), 3, torch.float32, seed=7)
    kwargs = {"plain": {}, "affine": dict(weight=weight, bias=bias), "scale": dict(scale=scale),
              "shift": dict(shift=shift), "silu": dict(silu=True), "scale_1c": dict(scale=scale[:1], shift=shift[:1])}
    call = dict(weight=None, bias=None, scale=None, shift=None, silu=False) | kwargs[extras]
    ours = ops.group_norm(x, 3, call["weight"], call["bias"], 1e-5, scale=call["scale"], shift=call["shift"],
                          silu=call["silu"], impl="triton")
    expected = group_norm_reference(x, 3, call["weight"], call["bias"], 1e-5, scale=call["scale"],
                                    shift=call["shift"], silu=call["silu"])
    torch.testing.assert_close(ours, expected, **NORM_TOLERANCE["fp32"])


@pytest.mark.parametrize("plan", ["fused", "split"])
def test_group_norm_statistics_survive_a_large_mean(plan):
    """Mean 1000, std 2: a sum-of-squares variance in float32 would lose most digits here."""
    x, weight, bias, _, _ = norm_inputs((1, 6, 600), 2, torch.float32, seed=8, mean=1000.0)
    splits, _ = group_norm_triton._split_plan(2, 3 * 600, x.device)
    assert plan == "fused" or splits > 1  # the chunk merge is what this checks
    ours = group_norm_triton._forward(x, 2, weight, bias, 1e-5,
                                      fused_limit=0 if plan == "split" else group_norm_triton.FUSED_LIMIT)
    expected = group_norm_reference(x.double(), 2, weight.double(), bias.double(), 1e-5)
    torch.testing.assert_close(ours.double(), expected, atol=1e-4, rtol=1e-4)


def test_group_norm_split_plan_covers_several_chunks_of_several_blocks():
    spatial = 2 * group_norm_triton.SPLIT_BLOCK + 9
    count = 2 * spatial  # 8 channels in 4 groups
    splits, chunk = group_norm_triton._split_plan(2 * 4, count, torch.device("cpu"))
    assert splits > 1 and chunk > group_norm_triton.SPLIT_BLOCK and (splits - 1) * chunk < count <= splits * chunk
    x, weight, bias, scale, shift = norm_inputs((2, 8, spatial), 4, torch.float32, seed=9)
    out = torch.full_like(x, float("nan"))
    group_norm_triton._forward(x, 4, weight, bias, 1e-5, scale, shift, True, out=out, fused_limit=0)
    torch.testing.assert_close(out, expected_norm(x, 4, weight, bias, scale, shift, silu=True),
                               **NORM_TOLERANCE["fp32"])


def test_group_norm_gradients_match_the_reference():
    x, weight, bias, scale, shift = norm_inputs((2, 6, 5, 7), 3, torch.float32, seed=10)
    scale, shift = scale.contiguous(), shift.contiguous()
    inputs = [t.requires_grad_() for t in (x, weight, bias, scale, shift)]
    reference_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(11))
    x, weight, bias, scale, shift = inputs
    out = ops.group_norm(x, 3, weight, bias, 1e-5, scale=scale, shift=shift, silu=True, impl="triton")
    out.backward(grad)
    rx, rweight, rbias, rscale, rshift = reference_inputs
    group_norm_reference(rx, 3, rweight, rbias, 1e-5, scale=rscale, shift=rshift, silu=True).backward(grad)
    for ours, expected in zip(inputs, reference_inputs):
        torch.testing.assert_close(ours.grad, expected.grad, atol=1e-5, rtol=1e-5)


def test_default_dispatch_on_cpu_never_tries_triton(monkeypatch):
    monkeypatch.delenv("CLIPSONIC_OPS", raising=False)
    monkeypatch.setattr(dispatch, "_try_triton", lambda *args, **kwargs: pytest.fail("CPU calls went to Triton"))
    q, k, v = qkv(1, 2, 9, 9, 16, torch.float32)
    assert torch.equal(ops.attention(q, k, v), attention_reference(q, k, v))
    x, weight, bias, scale, shift = norm_inputs((2, 8, 5, 5), 4, torch.float32)
    torch.testing.assert_close(ops.group_norm(x, 4, weight, bias, 1e-5, scale=scale, shift=shift, silu=True),
                               group_norm_reference(x, 4, weight, bias, 1e-5, scale=scale, shift=shift, silu=True),
                               atol=1e-5, rtol=1e-5)


def test_default_dispatch_wants_triton_for_cuda_inference_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv("CLIPSONIC_OPS", raising=False)
    cuda = SimpleNamespace(device=torch.device("cuda"), requires_grad=False)
    assert dispatch._wants_triton((cuda,), (None,))
    assert not dispatch._wants_triton((SimpleNamespace(device=torch.device("cpu"), requires_grad=False),), ())
    assert not dispatch._wants_triton((cuda,), (SimpleNamespace(requires_grad=True),))  # training: reference
    monkeypatch.setenv("CLIPSONIC_OPS", "reference")
    assert not dispatch._wants_triton((cuda,), ())


def test_default_dispatch_runs_the_kernels_when_it_wants_triton(monkeypatch):
    """What a CUDA call does, on CPU tensors under the interpreter."""
    monkeypatch.setattr(dispatch, "_wants_triton", lambda *args: True)
    calls = []
    for module, name in ((attention_triton, "attention_triton"), (group_norm_triton, "group_norm_triton")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name, **kw: calls.append(_n) or _f(*a, **kw))
    q, k, v = qkv(1, 2, 20, 20, 32, torch.float32)
    torch.testing.assert_close(ops.attention(q, k, v, causal=True), attention_reference(q, k, v, causal=True),
                               **ATTENTION_TOLERANCE["fp32"])
    x, weight, bias, scale, shift = norm_inputs((2, 8, 5, 5), 4, torch.float32)
    torch.testing.assert_close(ops.group_norm(x, 4, weight, bias, 1e-5, scale=scale, shift=shift),
                               group_norm_reference(x, 4, weight, bias, 1e-5, scale=scale, shift=shift),
                               **NORM_TOLERANCE["fp32"])
    assert calls == ["attention_triton", "group_norm_triton"]
    # Shapes the kernels do not cover quietly take the reference.
    q, k, v = qkv(1, 1, 3, 3, 160, torch.float32)
    assert torch.equal(ops.attention(q, k, v), attention_reference(q, k, v))
    assert calls == ["attention_triton", "group_norm_triton"]


def test_an_unusable_triton_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setattr(dispatch, "_wants_triton", lambda *args: True)
    monkeypatch.setattr(dispatch, "_triton_broken", {})

    def missing(op):
        raise ImportError("No module named 'triton'")

    monkeypatch.setattr(dispatch, "_triton_module", missing)
    q, k, v = qkv(1, 1, 6, 6, 16, torch.float32)
    x, weight, bias, _, _ = norm_inputs((1, 4, 9), 2, torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            assert torch.equal(ops.attention(q, k, v), attention_reference(q, k, v))
            assert torch.equal(ops.group_norm(x, 2, weight, bias, 1e-5), group_norm_reference(x, 2, weight, bias, 1e-5))
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == [
        "Triton attention is unusable (ImportError: No module named 'triton'); using the PyTorch reference "
        "(set CLIPSONIC_OPS=reference to silence this)"]


def test_explicit_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    q, k, v = qkv(1, 1, 4, 4, 16, torch.float32)
    with pytest.raises(ValueError, match="triton attention needs CUDA tensors, got cpu"):
        ops.attention(q, k, v, impl="triton")
    x, weight, bias, _, _ = norm_inputs((1, 4, 9), 2, torch.float32)
    with pytest.raises(ValueError, match="triton group_norm needs CUDA tensors, got cpu"):
        ops.group_norm(x, 2, weight, bias, 1e-5, impl="triton")


def test_environment_forces_the_reference(monkeypatch):
    monkeypatch.setenv("CLIPSONIC_OPS", "reference")
    monkeypatch.setattr(dispatch, "_try_triton", lambda *args, **kwargs: pytest.fail("went to Triton"))
    q, k, v = qkv(1, 1, 5, 5, 16, torch.float32)
    assert torch.equal(ops.attention(q, k, v), attention_reference(q, k, v))


def test_importing_clipsonic_ops_does_not_import_triton():
    code = "import sys, clipsonic.ops; print('triton' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# Run in a fresh process without the interpreter, so the kernels are real JIT functions.
COMPILE_FOR_HOPPER = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from clipsonic.ops import attention_triton as A, group_norm_triton as G

assert not (A.INTERPRETED or G.INTERPRETED)


def compile_sm90(fn, constants, pointer_dtypes, **options):
    signature = {name: "constexpr" if name in constants else "*" + pointer_dtypes[name] if name in pointer_dtypes
                 else "fp32" if name in ("qk_scale", "eps") else "i32" for name in fn.arg_names}
    constexprs = {(fn.arg_names.index(name),): value for name, value in constants.items()}
    kernel = triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 90, 32), options=options)
    assert kernel.asm["cubin"]


for dtype, dim, causal in (("bf16", 64, False), ("fp16", 128, True), ("fp32", 32, True)):
    compile_sm90(A._attention_forward, dict(CAUSAL=causal, BLOCK_M=128, BLOCK_N=64, BLOCK_D=dim, UPCAST=False,
                                            DOT_PRECISION="ieee" if dtype == "fp32" else "tf32"),
                 dict.fromkeys("QKVO", dtype), num_warps=4, num_stages=3)
pointers = dict(X="bf16", Y="bf16", W="fp32", BIAS="fp32", SCALE="bf16", SHIFT="bf16", COUNT="fp32", MEAN="fp32",
                M2="fp32")
for inner in (False, True):
    flags = dict(HAS_WEIGHT=True, HAS_BIAS=True, HAS_SCALE=True, HAS_SHIFT=True, SILU=True, CHANNELS_INNER=inner)
    compile_sm90(G._group_norm_fused, dict(flags, BLOCK=8192), pointers, num_warps=16)
    compile_sm90(G._group_chunk_stats, dict(CHANNELS_INNER=inner, BLOCK=2048), pointers, num_warps=4)
    compile_sm90(G._group_norm_apply, dict(flags, BLOCK=2048, SPLITS_BLOCK=8), pointers, num_warps=4)
print("compiled")
"""


@pytest.mark.slow
def test_kernels_compile_for_a_hopper_gpu():
    """No GPU here, but Triton compiles to sm_90 machine code without one: this catches what the
    interpreter lets through (types in loops, dot shapes, constexpr misuse)."""
    environment = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", COMPILE_FOR_HOPPER], capture_output=True, text=True,
                            env=environment)
    assert result.returncode == 0 and result.stdout.strip() == "compiled", result.stderr[-3000:]


def test_bench_ops_on_cpu_times_the_cpp_group_norm_and_a_unet_step():
    rows = bench.bench_ops("cpu", dtypes=("fp32",), norm_shapes=((2, 8, 6, 10),), groups=4, unet_preset="tiny",
                           frames=16, repeat=1, warmup=1, inner=1)
    names = [row.name for row in rows]
    assert not any(name.startswith("attention") for name in names)  # the Triton kernel needs CUDA
    assert any("unet tiny step" in name for name in names)
    assert all(row.seconds > 0 and row.best > 0 and math.isfinite(row.seconds) for row in rows)
    assert all(row.throughput > 0 and row.unit == "GB/s" for row in rows if row.name.startswith("group_norm"))
    assert "| benchmark |" in bench.ops_markdown_table(rows)
