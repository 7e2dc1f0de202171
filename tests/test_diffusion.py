import math

import pytest
import torch

from clipsonic.diffusion import GaussianDiffusion, classifier_free_guidance, cosine_betas, evenly_spaced

DIFFUSION = GaussianDiffusion.cosine(4000)


def test_cosine_schedule():
    betas = cosine_betas(4000)
    assert betas.dtype == torch.float64 and betas.shape == (4000,)
    assert betas.max() <= 0.999 and betas.min() > 0
    abar = torch.cumprod(1 - betas, 0)
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 1000, 2000, 3000):
        assert abar[t].item() == pytest.approx(f((t + 1) / 4000) / f(0), rel=1e-12)


def test_q_sample_and_posterior_closed_forms():
    x0 = torch.randn(5, 3, dtype=torch.float64)
    noise = torch.randn(5, 3, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 2000, 3999])
    abar = DIFFUSION.alphas_cumprod[t][:, None]
    xt = DIFFUSION.q_sample(x0, t, noise)
    torch.testing.assert_close(xt, abar.sqrt() * x0 + (1 - abar).sqrt() * noise)
    torch.testing.assert_close(DIFFUSION.predict_x0(xt, t, noise), x0)
    torch.testing.assert_close(DIFFUSION.predict_eps(xt, t, x0), noise)
    # Bayes: q(x_{t-1}|x_t,x0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x0), both Gaussian.
    for i in (1, 10, 500, 2000, 3999):
        beta, abar_t, abar_prev = DIFFUSION.betas[i], DIFFUSION.alphas_cumprod[i], DIFFUSION.alphas_cumprod[i - 1]
        precision = (1 - beta) / beta + 1 / (1 - abar_prev)
        x0_i, xt_i = x0[:1], xt[:1]
        mean = ((1 - beta).sqrt() / beta * xt_i + abar_prev.sqrt() / (1 - abar_prev) * x0_i) / precision
        got_mean, got_var = DIFFUSION.q_posterior(x0_i, xt_i, torch.tensor([i]))
        torch.testing.assert_close(got_mean, mean)
        torch.testing.assert_close(got_var.flatten()[0], 1 / precision)
        assert abar_t < abar_prev


def test_respacing_keeps_cumulative_alphas():
    spaced = DIFFUSION.respace(1000)
    assert spaced.num_steps == 1000 and spaced.timesteps[0] == 0 and spaced.timesteps[-1] == 3999
    torch.testing.assert_close(spaced.alphas_cumprod, DIFFUSION.alphas_cumprod[spaced.timesteps.long()])
    assert evenly_spaced(10, 4) == [0, 3, 6, 9]
    log_spaced = DIFFUSION.respace_log_snr(25)
    assert log_spaced.num_steps == 25 and log_spaced.timesteps[-1] == 3999 and log_spaced.timesteps[0] == 0
    with pytest.raises(ValueError, match="cannot take 5000 steps"):
        DIFFUSION.respace(5000)


MEAN, STD = 0.3, 0.2


def gaussian_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact noise prediction when data ~ N(MEAN, STD^2): E[eps | x_t]."""
    abar = DIFFUSION.alphas_cumprod[t.long()].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return (1 - abar).sqrt() * (x - abar.sqrt() * MEAN) / (abar * STD**2 + 1 - abar)


@pytest.mark.parametrize("sampler,steps,tolerance", [("ddpm", 1000, 0.03), ("ddpm", 250, 0.03), ("ddim", 250, 0.05),
                                                     ("dpm++", 25, 0.03), ("dpm++", 50, 0.02)])
def test_samplers_recover_a_gaussian(sampler, steps, tolerance):
    noise = torch.randn(4000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = DIFFUSION.sample(gaussian_eps, noise, sampler=sampler, steps=steps,
                         generator=torch.Generator().manual_seed(1), clip=False)
    assert x.mean().item() == pytest.approx(MEAN, abs=0.01)
    assert x.std().item() == pytest.approx(STD, rel=tolerance)


def test_sampling_is_reproducible_and_reports_progress():
    noise = torch.randn(10, 1, dtype=torch.float64)
    ticks = []
    a = DIFFUSION.sample(gaussian_eps, noise, "ddpm", 20, generator=torch.Generator().manual_seed(3), progress=ticks.append)
    b = DIFFUSION.sample(gaussian_eps, noise, "ddpm", 20, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and len(ticks) == 20


def test_guidance_formula_in_one_batched_call():
    calls = []

    def model(x, t, cond, drop):
        calls.append(x.shape[0])
        # conditional: x + cond, unconditional: 2x
        return torch.where(drop[:, None], 2 * x, x + cond)

    x, t, cond = torch.randn(3, 4), torch.zeros(3), torch.randn(3, 4)
    for w in (0.0, 1.5, 3.0):
        calls.clear()
        eps = classifier_free_guidance(model, cond, w)(x, t)
        torch.testing.assert_close(eps, (1 - w) * (2 * x) + w * (x + cond))
        assert calls == [6]
    calls.clear()
    torch.testing.assert_close(classifier_free_guidance(lambda x, t, c, d: x + c if d is None else None, cond, 1.0)(x, t), x + cond)


def test_training_loss_is_the_noise_mse():
    x0 = torch.zeros(3, 2, dtype=torch.float64)
    perfect = lambda xt, t: DIFFUSION.predict_eps(xt, t.long(), x0)  # noqa: E731
    assert DIFFUSION.training_loss(perfect, x0, torch.Generator().manual_seed(0)).item() < 1e-20
    blind = lambda xt, t: torch.zeros_like(xt)  # noqa: E731
    loss = DIFFUSION.training_loss(blind, torch.zeros(20000, 1, dtype=torch.float64), torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(1.0, rel=0.05)
