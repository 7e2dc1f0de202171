import math

import pytest
import torch

from clipsonic.diffusion import (GaussianDiffusion, Prediction, classifier_free_guidance, cosine_betas, evenly_spaced,
                                 guidance_interval)

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


V_DIFFUSION = GaussianDiffusion.cosine(4000, "v")


def gaussian_v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact velocity prediction for the same Gaussian data: v = (eps - sqrt(1 - abar) x_t) / sqrt(abar)."""
    abar = DIFFUSION.alphas_cumprod[t.long()].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    x0 = (x - (1 - abar).sqrt() * gaussian_eps(x, t)) / abar.sqrt()
    return abar.sqrt() * gaussian_eps(x, t) - (1 - abar).sqrt() * x0


def test_velocity_closed_form_and_its_training_target():
    x0, noise = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 2000, 3999])
    abar = V_DIFFUSION.alphas_cumprod[t][:, None]
    torch.testing.assert_close(V_DIFFUSION.velocity(x0, t, noise), abar.sqrt() * noise - (1 - abar).sqrt() * x0)
    assert V_DIFFUSION.prediction is Prediction.V and V_DIFFUSION.respace_log_snr(25).prediction is Prediction.V

    def perfect(xt, tt):
        steps = tt.long()
        return V_DIFFUSION.velocity(x0, steps, V_DIFFUSION.predict_eps(xt, steps, x0))

    assert V_DIFFUSION.training_loss(perfect, x0, torch.Generator().manual_seed(0)).item() < 1e-18
    # the eps network's perfect answer is wrong for a v process
    assert V_DIFFUSION.training_loss(lambda xt, tt: DIFFUSION.predict_eps(xt, tt.long(), x0), x0,
                                     torch.Generator().manual_seed(0)).item() > 0.1


@pytest.mark.parametrize("sampler,steps", [("ddpm", 250), ("ddim", 250), ("dpm++", 25)])
def test_a_v_network_samples_what_the_eps_network_samples(sampler, steps):
    noise = torch.randn(2000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    by_eps = DIFFUSION.sample(gaussian_eps, noise, sampler=sampler, steps=steps,
                              generator=torch.Generator().manual_seed(1), clip=False)
    by_v = V_DIFFUSION.sample(gaussian_v, noise, sampler=sampler, steps=steps,
                              generator=torch.Generator().manual_seed(1), clip=False)
    torch.testing.assert_close(by_v, by_eps, rtol=1e-6, atol=1e-8)


def test_at_the_last_step_v_does_not_amplify_the_networks_error():
    """The reason the demo UNet predicts v: an error of 0.01 in the network's output moves the
    data estimate at the schedule's last step by 0.01 (v) instead of 0.01 * sqrt((1 - abar) / abar) (eps)."""
    x = torch.randn(4, 1, dtype=torch.float64)
    error = 0.01
    x0_eps, _ = DIFFUSION._model_x0(lambda x, t: gaussian_eps(x, t) + error, x, 3999, clip=False)
    x0_eps_exact, _ = DIFFUSION._model_x0(gaussian_eps, x, 3999, clip=False)
    x0_v, _ = V_DIFFUSION._model_x0(lambda x, t: gaussian_v(x, t) + error, x, 3999, clip=False)
    x0_v_exact, _ = V_DIFFUSION._model_x0(gaussian_v, x, 3999, clip=False)
    abar = DIFFUSION.alphas_cumprod[-1].item()
    torch.testing.assert_close(x0_eps - x0_eps_exact, torch.full_like(x, -error * math.sqrt((1 - abar) / abar)))
    assert (x0_v - x0_v_exact).abs().max().item() <= error
    assert (x0_eps - x0_eps_exact).abs().min().item() > 1e4 * error


def test_guidance_only_inside_its_noise_interval():
    calls = []

    def model(x, t, cond, drop):
        calls.append(x.shape[0])
        return x + cond if drop is None else torch.where(drop[:, None], 2 * x, x + cond)

    active = guidance_interval(DIFFUSION, 0.28, 5.42)
    sigmas = ((1 - DIFFUSION.alphas_cumprod) / DIFFUSION.alphas_cumprod).sqrt()
    inside = int(torch.nonzero((sigmas > 0.28) & (sigmas <= 5.42))[0])
    below, above = inside - 1, int(torch.nonzero(sigmas > 5.42)[0])
    x, cond = torch.randn(3, 4), torch.randn(3, 4)
    guided = classifier_free_guidance(model, cond, 2.0, active)
    for step, expected, batch in ((inside, (1 - 2.0) * 2 * x + 2.0 * (x + cond), 6), (below, x + cond, 3),
                                  (above, x + cond, 3)):
        calls.clear()
        torch.testing.assert_close(guided(x, torch.full((3,), float(step))), expected)
        assert calls == [batch]  # outside the interval: one unguided call on the batch
    with pytest.raises(ValueError, match="low < high"):
        guidance_interval(DIFFUSION, 3.0, 1.0)
