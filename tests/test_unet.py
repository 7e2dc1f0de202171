import pytest
import torch

from clipsonic.unet import UNet, UNetConfig, timestep_embedding


def test_paper_preset_size():
    with torch.device("meta"):
        model = UNet(UNetConfig.preset("paper"))
    assert 120e6 < sum(p.numel() for p in model.parameters()) < 122e6  # DESIGN: ~121 M


@pytest.mark.parametrize("frames", [8, 16, 24, 64])
def test_any_frame_count_divisible_by_the_downsampling(frames):
    torch.manual_seed(0)
    model = UNet(UNetConfig.preset("tiny", channel_mult=(1, 2, 2, 2), cond_dim=12)).eval()
    assert model.config.downsampling == 8
    x = torch.randn(2, 1, 16, frames)
    with torch.no_grad():
        out = model(x, torch.tensor([3.0, 700.0]), torch.randn(2, 12))
    assert out.shape == x.shape and out.dtype == torch.float32


def test_rejects_sizes_it_cannot_halve():
    model = UNet(UNetConfig.preset("tiny"))
    with pytest.raises(ValueError, match="multiples of 2"):
        model(torch.zeros(1, 1, 16, 15), torch.zeros(1))


def test_null_condition_paths_agree():
    torch.manual_seed(0)
    model = UNet(UNetConfig.preset("tiny", cond_dim=8)).eval()
    for parameter in model.parameters():  # leave the zero-initialised outputs: make them matter
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    x, t, cond = torch.randn(2, 1, 16, 8), torch.tensor([5.0, 50.0]), torch.randn(2, 8)
    with torch.no_grad():
        unconditional = model(x, t, None)
        dropped = model(x, t, cond, torch.tensor([True, True]))
        conditional = model(x, t, cond)
        mixed = model(x, t, cond, torch.tensor([True, False]))
        scaled = model(x, t, 3.0 * cond)
    torch.testing.assert_close(unconditional, dropped)
    torch.testing.assert_close(mixed[0], unconditional[0])
    torch.testing.assert_close(mixed[1], conditional[1])
    torch.testing.assert_close(scaled, conditional)  # the embedding is L2-normalised
    assert not torch.allclose(conditional, unconditional)


def test_timestep_embedding():
    emb = timestep_embedding(torch.tensor([0.0, 10.0]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0]))
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1, :4], torch.cos(10 * freqs))


def test_bf16_matches_fp32():
    from clipsonic.nn import set_precision

    torch.manual_seed(1)
    model = UNet(UNetConfig.preset("tiny", cond_dim=8)).eval()
    for parameter in model.parameters():
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    x, t, cond = torch.randn(2, 1, 16, 16), torch.tensor([5.0, 500.0]), torch.randn(2, 8)
    with torch.no_grad():
        reference = model(x, t, cond)
        set_precision(model, torch.bfloat16)
        low = model.to(memory_format=torch.channels_last)(x, t, cond)
    assert model.out_norm.weight.dtype == torch.float32 and model.out_conv.weight.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(low.flatten(), reference.flatten(), dim=0) > 0.999
