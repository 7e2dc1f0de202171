import json
import shutil

import numpy as np
import pytest
import torch

from clipsonic import ops
from clipsonic.errors import CheckpointError, ConfigError
from clipsonic.ops.anti_alias_reference import kaiser_sinc_filter
from clipsonic.vocoder import BigVGAN, BigVGANConfig, config_from_nvidia, fold_weight_norm, load_bigvgan, save_bigvgan
from conftest import FIXTURES
from seeded import seeded_state_dict


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURES / "bigvgan_16k.npz")


def nvidia_state(reference, layout="weight_g"):
    """The seeded generator in NVIDIA's weight-norm key layout (the fixture's keys, every one)."""
    ours = BigVGAN(config_from_nvidia(FIXTURES / "bigvgan_16k.json")).state_dict()
    keys = [str(k) for k in reference["state_keys"]]
    shapes = {}
    for key in keys:
        if key.endswith((".weight_g", ".weight_v")):
            weight = ours[key[:-2]]
            shapes[key] = tuple(weight.shape) if key.endswith("_v") else (weight.shape[0],) + (1,) * (weight.dim() - 1)
        elif not key.endswith(".filter"):
            shapes[key] = tuple(ours[key].shape)
    state = {**seeded_state_dict(shapes, 31), **{k: ours[k] for k in keys if k.endswith(".filter")}}
    if layout == "parametrizations":
        state = {k.replace(".weight_g", ".parametrizations.weight.original0")
                  .replace(".weight_v", ".parametrizations.weight.original1"): v for k, v in state.items()}
    return state


def relative_error(ours, expected):
    expected = torch.as_tensor(expected)
    return ((ours - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("layout", ["weight_g", "parametrizations"])
def test_nvidia_checkpoint_matches_the_bigvgan_package(tmp_path, reference, layout):
    torch.save({"generator": nvidia_state(reference, layout)}, tmp_path / "bigvgan_generator.pt")
    shutil.copy(FIXTURES / "bigvgan_16k.json", tmp_path / "config.json")
    model = load_bigvgan(tmp_path / "bigvgan_generator.pt")
    assert model.config.upsample_initial_channel == 512 and model.config.num_mels == 64
    with torch.no_grad():
        wav = model(torch.from_numpy(reference["mel"]))
    assert wav.shape == (1, 1, 24 * 512)
    assert relative_error(wav, reference["wav"]) <= 1e-4


def test_our_checkpoint_round_trip_and_bf16(tmp_path, reference):
    torch.save({"generator": nvidia_state(reference)}, tmp_path / "g.pt")
    model = load_bigvgan(tmp_path / "g.pt", FIXTURES / "bigvgan_16k.json")
    save_bigvgan(tmp_path / "ours.pt", model)
    again = load_bigvgan(tmp_path / "ours.pt")
    mel = torch.from_numpy(reference["mel"])
    with torch.no_grad():
        torch.testing.assert_close(again(mel), model(mel), rtol=0, atol=0)
        low = load_bigvgan(tmp_path / "ours.pt", dtype=torch.bfloat16)(mel).float()
    assert relative_error(low, reference["wav"]) < 5e-2


def test_loading_errors(tmp_path, reference):
    state = nvidia_state(reference)
    torch.save({"generator": state}, tmp_path / "g.pt")
    with pytest.raises(ConfigError, match="needs its config.json"):
        load_bigvgan(tmp_path / "g.pt")
    del state["conv_pre.weight_g"]
    torch.save({"generator": state}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="weight norm of conv_pre is missing its g half"):
        load_bigvgan(tmp_path / "broken.pt", FIXTURES / "bigvgan_16k.json")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a BigVGAN generator checkpoint"):
        load_bigvgan(tmp_path / "other.pt", FIXTURES / "bigvgan_16k.json")
    config = tmp_path / "small.json"
    config.write_text('{"upsample_rates": [4, 4], "upsample_kernel_sizes": [8, 8], "upsample_initial_channel": 8, '
                      '"resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1]], "num_mels": 8}')
    with pytest.raises(ConfigError, match="upsample rates multiply to 16, not the hop size 512"):
        config_from_nvidia(config)


def test_weight_norm_folding():
    v = torch.randn(4, 3, 5)
    g = torch.rand(4, 1, 1) + 0.5
    folded = fold_weight_norm({"conv.weight_g": g, "conv.weight_v": v, "conv.bias": torch.zeros(4)})
    expected = torch._weight_norm(v, g, 0)
    torch.testing.assert_close(folded["conv.weight"], expected)
    assert set(folded) == {"conv.weight", "conv.bias"}


@pytest.mark.parametrize("length", [1, 2, 7, 64, 101])
@pytest.mark.parametrize("snake_beta", [True, False])
def test_anti_aliased_activation_reference(length, snake_beta):
    """Against a direct construction: zero-stuffed upsampling + filtering, snake, filtering + decimation."""
    torch.manual_seed(length)
    x = torch.randn(2, 3, length, dtype=torch.float64)
    taps = kaiser_sinc_filter(0.25, 0.3, 12).double()
    alpha = torch.rand(3, dtype=torch.float64) + 0.5
    beta = torch.rand(3, dtype=torch.float64) + 0.5 if snake_beta else None
    ours = ops.anti_alias_activation(x, taps, taps, alpha, beta)
    # Independent construction with explicit loops over the padded, zero-stuffed signal.
    padded = torch.cat([x[..., :1].expand(-1, -1, 5), x, x[..., -1:].expand(-1, -1, 5)], dim=-1)
    stuffed = torch.zeros(2, 3, 2 * padded.shape[-1], dtype=torch.float64)
    stuffed[..., ::2] = padded
    full = torch.stack([2 * sum(stuffed[..., n - k] * taps[k] for k in range(12) if 0 <= n - k < stuffed.shape[-1])
                        for n in range(stuffed.shape[-1] + 11)], dim=-1)
    up = full[..., 15:15 + 2 * length]
    b = (alpha if beta is None else beta)[None, :, None]
    act = up + torch.sin(up * alpha[None, :, None]) ** 2 / (b + 1e-9)
    act = torch.cat([act[..., :1].expand(-1, -1, 5), act, act[..., -1:].expand(-1, -1, 6)], dim=-1)
    down = torch.stack([sum(act[..., 2 * m + k] * taps[k] for k in range(12)) for m in range(length)], dim=-1)
    torch.testing.assert_close(ours, down, rtol=1e-10, atol=1e-10)


def test_presets_build():
    for name in ("paper", "paper-large", "tiny"):
        config = BigVGANConfig.preset(name)
        with torch.device("meta"):
            model = BigVGAN(config)
        assert model.config.hop_size == 512
    with torch.no_grad():
        out = BigVGAN(BigVGANConfig.preset("tiny"))(torch.randn(2, 64, 5))
    assert out.shape == (2, 1, 5 * 512) and out.abs().max() <= 1


def test_config_as_a_path_a_dict_or_ours(tmp_path, reference):
    torch.save({"generator": nvidia_state(reference)}, tmp_path / "g.pt")
    path = FIXTURES / "bigvgan_16k.json"
    parsed = json.loads(path.read_text())
    mel = torch.from_numpy(reference["mel"])
    with torch.no_grad():
        for config in (path, str(path), parsed, config_from_nvidia(path)):
            model = load_bigvgan(tmp_path / "g.pt", config=config)
            assert model.config == config_from_nvidia(path)
            assert relative_error(model(mel), reference["wav"]) <= 1e-4
    assert config_from_nvidia(parsed) == config_from_nvidia(path)
    with pytest.raises(ConfigError, match="must be a path to a JSON file or its parsed dict, got int"):
        load_bigvgan(tmp_path / "g.pt", config=512)
    with pytest.raises(ConfigError, match="the BigVGAN config given as a dict: not a BigVGAN config"):
        load_bigvgan(tmp_path / "g.pt", config={"num_mels": 64})
