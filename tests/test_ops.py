import pytest
import torch

from clipsonic import ops


def test_attention_reference_matches_explicit_softmax():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, dtype=torch.float64) for _ in range(3))
    for causal in (False, True):
        scores = q @ k.transpose(-1, -2) / 8**0.5
        if causal:
            scores = scores.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
        expected = scores.softmax(-1) @ v
        torch.testing.assert_close(ops.attention(q, k, v, causal=causal), expected, rtol=1e-10, atol=1e-10)


def test_dispatch_refuses_what_it_does_not_have(monkeypatch):
    q = torch.zeros(1, 1, 2, 4)
    with pytest.raises(ValueError, match="unknown implementation 'fast'"):
        ops.attention(q, q, q, impl="fast")
    with pytest.raises(ValueError, match="attention has no 'cuda' implementation in this build"):
        ops.attention(q, q, q, impl="cuda")
    monkeypatch.setenv("CLIPSONIC_OPS", "reference")
    assert ops.attention(q, q, q).shape == (1, 1, 2, 4)
