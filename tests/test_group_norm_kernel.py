"""The fused C++ GroupNorm (+ scale-shift + SiLU) against the reference."""


import pytest
import torch

from clipsonic import ops
from clipsonic.ops import group_norm_native
from conftest import require_extension


@pytest.fixture(scope="module")
def cpp():
    return require_extension(group_norm_native.cpu_module())


CASES = [((2, 64, 16, 32), 32, True), ((2, 64, 16, 32), 32, False), ((1, 6, 5, 7), 3, True),
         ((3, 8, 1, 1), 4, True), ((2, 12, 33), 4, False), ((1, 256, 8, 16), 32, True)]


@pytest.mark.parametrize("shape,groups,channels_last", CASES)
@pytest.mark.parametrize("extras", ["plain", "affine", "scale_shift_silu", "silu"])
def test_cpp_matches_reference_fp32(cpp, shape, groups, channels_last, extras):
    torch.manual_seed(sum(shape))
    x = 2 * torch.randn(shape) + 0.5
    if channels_last and x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
    channels = shape[1]
    weight = torch.randn(channels) if extras != "plain" else None
    bias = torch.randn(channels) if extras != "plain" else None
    scale = torch.randn(shape[0], channels) if extras == "scale_shift_silu" else None
    shift = torch.randn(shape[0], channels) if extras == "scale_shift_silu" else None
    silu = "silu" in extras
    expected = ops.group_norm(x, groups, weight, bias, 1e-5, scale, shift, silu, impl="reference")
    ours = ops.group_norm(x, groups, weight, bias, 1e-5, scale, shift, silu, impl="cpp")
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=5e-5)
    if x.dim() == 4 and channels_last:
        assert ours.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels_last", [True, False])
def test_cpp_bf16_within_rounding_of_the_float32_result(cpp, channels_last):
    torch.manual_seed(0)
    x = (3 * torch.randn(2, 128, 16, 24) + 1).bfloat16()
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight, bias = torch.randn(128), torch.randn(128)
    scale, shift = torch.randn(2, 128).bfloat16(), torch.randn(2, 128).bfloat16()
    exact = ops.group_norm(x.float(), 32, weight, bias, 1e-5, scale.float(), shift.float(), True, impl="reference")
    ours = ops.group_norm(x, 32, weight, bias, 1e-5, scale, shift, True, impl="cpp")
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), exact, rtol=8e-3, atol=8e-3)  # one bf16 rounding


def test_dispatch_prefers_the_kernel_for_inference_only(cpp, monkeypatch):
    calls = []
    real = group_norm_native.group_norm_cpp
    monkeypatch.setitem(ops.dispatch._REGISTRY["group_norm"], "cpp", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(1, 8, 4, 4)
    weight = torch.nn.Parameter(torch.ones(8))
    with torch.no_grad():
        ops.group_norm(x, 4, weight, None, 1e-5)
    assert calls == [1]
    ops.group_norm(x, 4, weight, None, 1e-5).sum().backward()
    assert calls == [1] and weight.grad is not None
    with pytest.raises(RuntimeError, match="8 channels do not split into 3 groups"):
        ops.group_norm(x, 3, None, None, 1e-5, impl="cpp")
