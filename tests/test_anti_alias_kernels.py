"""The compiled anti-aliased activations against the reference (C++ here; CUDA where a GPU exists)."""

import logging
import shutil
import subprocess

import pytest
import torch

from clipsonic import ops
from clipsonic.ops import anti_alias_native, extensions
from clipsonic.ops.anti_alias_reference import kaiser_sinc_filter
from conftest import require_extension

TAPS = kaiser_sinc_filter(0.25, 0.3, 12)


@pytest.fixture(scope="module")
def cpp():
    return require_extension(anti_alias_native.cpu_module())


@pytest.mark.parametrize("length", [1, 2, 3, 5, 12, 63, 1000])
@pytest.mark.parametrize("snake_beta", [True, False])
def test_cpp_matches_reference_fp32(cpp, length, snake_beta):
    torch.manual_seed(length)
    x = 3 * torch.randn(3, 7, length)
    alpha = 0.1 + 6 * torch.rand(7)  # large alphas exercise the sine's range reduction
    beta = 0.2 + torch.rand(7) if snake_beta else None
    expected = ops.anti_alias_activation(x, TAPS, TAPS, alpha, beta, impl="reference")
    ours = ops.anti_alias_activation(x, TAPS, TAPS, alpha, beta, impl="cpp")
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=2e-5)


def test_cpp_bf16_and_non_contiguous_input(cpp):
    torch.manual_seed(0)
    x = torch.randn(2, 100, 16).transpose(1, 2)  # [2, 16, 100], not contiguous
    alpha, beta = torch.rand(16) + 0.5, torch.rand(16) + 0.5
    expected = ops.anti_alias_activation(x.contiguous(), TAPS, TAPS, alpha, beta, impl="reference")
    torch.testing.assert_close(ops.anti_alias_activation(x, TAPS, TAPS, alpha, beta, impl="cpp"), expected,
                               rtol=1e-5, atol=2e-5)
    low = ops.anti_alias_activation(x.bfloat16(), TAPS, TAPS, alpha, beta, impl="cpp")
    assert low.dtype == torch.bfloat16
    reference_of_rounded = ops.anti_alias_activation(x.bfloat16().float(), TAPS, TAPS, alpha, beta, impl="reference")
    torch.testing.assert_close(low.float(), reference_of_rounded, rtol=1e-2, atol=2e-2)


def test_cpp_checks_its_inputs(cpp):
    x = torch.randn(1, 4, 10)
    with pytest.raises(RuntimeError, match="filters must have 12 taps"):
        ops.anti_alias_activation(x, TAPS[:10], TAPS[:10], torch.ones(4), impl="cpp")
    with pytest.raises(RuntimeError, match="alpha must have 4 values"):
        ops.anti_alias_activation(x, TAPS, TAPS, torch.ones(3), impl="cpp")
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        ops.anti_alias_activation(x.double(), TAPS, TAPS, torch.ones(4), impl="cpp")


def test_dispatch_uses_the_kernel_without_gradients_and_the_reference_with(cpp, monkeypatch):
    calls = []
    real = anti_alias_native.anti_alias_activation_cpp
    monkeypatch.setitem(ops.dispatch._REGISTRY["anti_alias_activation"], "cpp",
                        lambda *args: calls.append(1) or real(*args))
    x, alpha = torch.randn(1, 4, 50), torch.ones(4)
    with torch.no_grad():
        ops.anti_alias_activation(x, TAPS, TAPS, alpha)
    assert calls == [1]
    trainable = torch.nn.Parameter(alpha.clone())
    ops.anti_alias_activation(x, TAPS, TAPS, trainable).sum().backward()
    assert calls == [1] and trainable.grad is not None
    monkeypatch.setenv("CLIPSONIC_OPS", "reference")
    with torch.no_grad():
        ops.anti_alias_activation(x, TAPS, TAPS, alpha)
    assert calls == [1]


def test_a_failed_build_falls_back_with_one_reason(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(extensions.CACHE_VARIABLE, str(tmp_path))
    broken = tmp_path / "csrc"
    broken.mkdir()
    (broken / "broken.cpp").write_text("this is not C++\n")
    monkeypatch.setattr(extensions, "source_folder", lambda: broken)
    with caplog.at_level(logging.WARNING, logger="clipsonic.ops.extensions"):
        assert extensions.load("clipsonic_broken_probe", ("broken.cpp",)) is None
        assert extensions.load("clipsonic_broken_probe", ("broken.cpp",)) is None
    warnings = [r for r in caplog.records if "cannot be built" in r.getMessage()]
    assert len(warnings) == 1 and "using the PyTorch reference" in warnings[0].getMessage()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_source_compiles_for_hopper(tmp_path):
    source = extensions.source_folder() / "anti_alias_cuda.cu"
    done = subprocess.run(["nvcc", "-arch=sm_90", "-c", str(source), "-o", str(tmp_path / "anti_alias.o")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "anti_alias.o").stat().st_size > 0


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 2e-5), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)])
def test_cuda_matches_reference(dtype, tolerance):
    torch.manual_seed(0)
    for length in (1, 7, 255, 256, 257, 5000):
        x = torch.randn(2, 6, length, device="cuda")
        alpha, beta = torch.rand(6, device="cuda") + 0.5, torch.rand(6, device="cuda") + 0.5
        expected = ops.anti_alias_activation(x.to(dtype).float(), TAPS.cuda(), TAPS.cuda(), alpha, beta, impl="reference")
        ours = ops.anti_alias_activation(x.to(dtype), TAPS.cuda(), TAPS.cuda(), alpha, beta, impl="cuda")
        torch.testing.assert_close(ours.float(), expected, rtol=tolerance, atol=tolerance)
