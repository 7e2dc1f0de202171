"""Gaussian diffusion maths: schedules, the training loss, respacing and samplers.

Follows openai/improved-diffusion's ``gaussian_diffusion.py`` and ``respace.py`` (MIT) for the
cosine schedule (s = 0.008, betas capped at 0.999), epsilon prediction with an MSE loss,
fixed ("large") or posterior ("small") DDPM variances and timestep respacing; DDIM (Song et
al., 2021) with eta; DPM-Solver++(2M) (Lu et al., 2022) in its multistep data-prediction
form. The network predicts the noise (eps, the paper's and improved-diffusion's choice) or the
velocity v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho, 2022), whose data estimate
does not amplify the network's errors at low SNR (`Prediction`). Networks appear only as
callables: a sampler takes ``net_fn(x, t) -> prediction`` where t holds *original* timestep
indices (floats), so respaced schedules need no wrapper around the network. Classifier-free guidance builds such a callable from a conditional network,
evaluating both halves in one batched forward. Nothing here imports a network.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

NetFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Prediction(str, enum.Enum):
    """What the network outputs. With eps, the data estimate (x_t - sqrt(1 - abar) eps) / sqrt(abar)
    multiplies the network's error by sqrt((1 - abar) / abar): 8e4 at the cosine schedule's last
    step, where sampling starts. With v, x0 = sqrt(abar) x_t - sqrt(1 - abar) v never amplifies it."""

    EPS = "eps"
    V = "v"


class Sampler(str, enum.Enum):
    DDPM = "ddpm"
    DDIM = "ddim"
    DPM_SOLVER = "dpm++"


def cosine_alpha_bar(t: float, s: float = 0.008) -> float:
    return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Betas [steps] (float64) whose cumulative product follows the cosine schedule."""
    betas = [min(1 - cosine_alpha_bar((i + 1) / steps) / cosine_alpha_bar(i / steps), max_beta) for i in range(steps)]
    return torch.tensor(betas, dtype=torch.float64)


def evenly_spaced(total: int, count: int) -> list[int]:
    """`count` timestep indices spread evenly over [0, total) including both ends (improved-diffusion's rule)."""
    if not 1 <= count <= total:
        raise ValueError(f"cannot take {count} steps out of {total}")
    if count == 1:
        return [total - 1]
    stride = (total - 1) / (count - 1)
    return sorted({round(i * stride) for i in range(count)})


def _gather(values: torch.Tensor, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[index] shaped to broadcast against `like` [B, ...], in like's dtype."""
    out = values.to(like.device)[index.to(like.device)].to(like.dtype)
    return out.view(-1, *([1] * (like.dim() - 1)))


@dataclasses.dataclass
class GaussianDiffusion:
    """A discrete diffusion process over `len(betas)` steps, possibly a respaced subset of a longer one.

    `timesteps[i]` is the original index of step i: what the network is told.
    """

    betas: torch.Tensor
    timesteps: torch.Tensor
    prediction: Prediction = Prediction.EPS

    @classmethod
    def cosine(cls, steps: int = 4000, prediction: str | Prediction = Prediction.EPS) -> "GaussianDiffusion":
        return cls(cosine_betas(steps), torch.arange(steps, dtype=torch.float64), Prediction(prediction))

    def __post_init__(self) -> None:
        self.prediction = Prediction(self.prediction)
        betas = self.betas.double()
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.posterior_variance = betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1 - self.alphas_cumprod_prev) * (1 - betas).sqrt() / (1 - self.alphas_cumprod)

    @property
    def num_steps(self) -> int:
        return self.betas.shape[0]

    def subset(self, keep: list[int]) -> "GaussianDiffusion":
        """The process restricted to the steps `keep` (ascending), betas recomputed so that
        each kept step has its original cumulative alpha."""
        kept = self.alphas_cumprod[keep]
        previous = torch.cat([torch.ones(1, dtype=torch.float64), kept[:-1]])
        return GaussianDiffusion(1 - kept / previous, self.timesteps[keep], self.prediction)

    def respace(self, count: int) -> "GaussianDiffusion":
        """`count` steps evenly spaced in time (improved-diffusion's respacing; used by DDPM and DDIM)."""
        return self.subset(evenly_spaced(self.num_steps, count))

    def respace_log_snr(self, count: int) -> "GaussianDiffusion":
        """`count` distinct steps evenly spaced in log-SNR, first and last step included.

        DPM-Solver takes steps of equal size in log-SNR; with the cosine schedule, whose final
        steps jump far in log-SNR, this is much more accurate than even time spacing (25 steps
        recover a Gaussian's spread to 2 %, against 26 % with time spacing).
        """
        if not 1 <= count <= self.num_steps:
            raise ValueError(f"cannot take {count} steps out of {self.num_steps}")
        if count == 1:
            return self.subset([self.num_steps - 1])
        log_snr = 0.5 * torch.log(self.alphas_cumprod / (1 - self.alphas_cumprod))  # decreasing in t
        # Near t = 0 neighbouring steps are far apart in log-SNR, so even spacing can land twice
        # on one step: ask for more points until `count` distinct steps come out, then thin the
        # most crowded interior points if there are too many.
        for asked in range(count, 4 * self.num_steps):
            targets = torch.linspace(log_snr[-1].item(), log_snr[0].item(), asked, dtype=torch.float64)
            found = torch.searchsorted(-log_snr, -targets).clamp(max=self.num_steps - 1)
            keep = sorted({int(i) for i in found} | {0, self.num_steps - 1})
            if len(keep) >= count:
                break
        while len(keep) > count:
            spans = [keep[i + 1] - keep[i - 1] for i in range(1, len(keep) - 1)]
            del keep[1 + spans.index(min(spans))]
        return self.subset(keep)

    # -- forward process and training ------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, for step indices t [B]."""
        return _gather(self.alphas_cumprod.sqrt(), t, x0) * x0 + _gather((1 - self.alphas_cumprod).sqrt(), t, x0) * noise

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x0)."""
        mean = _gather(self.posterior_mean_coef1, t, xt) * x0 + _gather(self.posterior_mean_coef2, t, xt) * xt
        return mean, _gather(self.posterior_variance, t, xt)

    def predict_x0(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (xt - _gather((1 - self.alphas_cumprod).sqrt(), t, xt) * eps) / _gather(self.alphas_cumprod.sqrt(), t, xt)

    def predict_eps(self, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (xt - _gather(self.alphas_cumprod.sqrt(), t, xt) * x0) / _gather((1 - self.alphas_cumprod).sqrt(), t, xt)

    def velocity(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0."""
        return _gather(self.alphas_cumprod.sqrt(), t, x0) * noise - _gather((1 - self.alphas_cumprod).sqrt(), t, x0) * x0

    def training_loss(self, net_fn: NetFn, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared error of the network's prediction (noise or velocity) at uniformly drawn steps (a scalar).

        The v loss is the eps loss weighted by 1 + 1/SNR: it stresses the noisy steps, where a
        sample's overall level is decided.
        """
        t = torch.randint(0, self.num_steps, (x0.shape[0],), generator=generator, device="cpu").to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, device="cpu", dtype=x0.dtype).to(x0.device)
        xt = self.q_sample(x0, t, noise)
        target = noise if self.prediction is Prediction.EPS else self.velocity(x0, t, noise)
        return torch.mean((net_fn(xt, self.timesteps[t].to(x0.device).float()) - target) ** 2)

    # -- sampling ----------------------------------------------------------------------

    def _model_x0(self, net_fn: NetFn, x: torch.Tensor, i: int, clip: bool) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.full((x.shape[0],), i, dtype=torch.long)
        out = net_fn(x, self.timesteps[t].to(x.device).float()).to(x.dtype)
        if self.prediction is Prediction.EPS:
            eps = out
            x0 = self.predict_x0(x, t, eps)
        else:
            alpha, sigma = _gather(self.alphas_cumprod.sqrt(), t, x), _gather((1 - self.alphas_cumprod).sqrt(), t, x)
            x0, eps = alpha * x - sigma * out, sigma * x + alpha * out
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = self.predict_eps(x, t, x0)
        return x0, eps

    def ddpm(self, net_fn: NetFn, noise: torch.Tensor, generator: torch.Generator | None = None,
             variance: str = "large", clip: bool = True, progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """Ancestral sampling over every step of this (respaced) process.

        `variance`: ``"large"`` uses beta_t (improved-diffusion's default without learned
        variances), ``"small"`` the posterior variance.
        """
        if variance not in ("large", "small"):
            raise ValueError(f"variance must be 'large' or 'small', got {variance!r}")
        large = torch.cat([self.posterior_variance[1:2], self.betas[1:]])
        variances = large if variance == "large" else self.posterior_variance
        x = noise
        for i in reversed(range(self.num_steps)):
            x0, _ = self._model_x0(net_fn, x, i, clip)
            t = torch.full((x.shape[0],), i, dtype=torch.long)
            mean, _ = self.q_posterior(x0, x, t)
            if i > 0:
                z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
                x = mean + _gather(variances, t, x).sqrt() * z
            else:
                x = mean
            if progress:
                progress(1)
        return x

    def ddim(self, net_fn: NetFn, noise: torch.Tensor, eta: float = 0.0, generator: torch.Generator | None = None,
             clip: bool = True, progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """DDIM over every step of this (respaced) process; eta = 0 is deterministic, 1 is DDPM-like."""
        x = noise
        for i in reversed(range(self.num_steps)):
            x0, eps = self._model_x0(net_fn, x, i, clip)
            abar = self.alphas_cumprod[i].item()
            abar_prev = self.alphas_cumprod_prev[i].item()
            sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
            x = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
            if sigma > 0 and i > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
            if progress:
                progress(1)
        return x

    def dpm_solver(self, net_fn: NetFn, noise: torch.Tensor, clip: bool = True,
                   progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """DPM-Solver++(2M): one network call per step of this (respaced) process.

        In log-SNR lambda = log(alpha / sigma), with data predictions D:
        x_next = (sigma_next / sigma) x - alpha_next (exp(-h) - 1) D,  h = lambda_next - lambda,
        where D is the last prediction on the first step and on the final step (to sigma = 0,
        which returns the data prediction), else the second-order combination
        (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}, r = h_previous / h.
        """
        alphas = self.alphas_cumprod.sqrt()
        sigmas = (1 - self.alphas_cumprod).sqrt()
        x = noise
        previous_x0, previous_h = None, None
        order = list(reversed(range(self.num_steps)))
        for position, i in enumerate(order):
            x0, _ = self._model_x0(net_fn, x, i, clip)
            if position == len(order) - 1:
                x = x0
            else:
                j = order[position + 1]
                lam, lam_next = math.log(alphas[i] / sigmas[i]), math.log(alphas[j] / sigmas[j])
                h = lam_next - lam
                if previous_x0 is None:
                    data = x0
                else:
                    r = previous_h / h
                    data = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous_x0
                x = (sigmas[j] / sigmas[i]).item() * x - alphas[j].item() * math.expm1(-h) * data
                previous_x0, previous_h = x0, h
            if progress:
                progress(1)
        return x

    def sample(self, net_fn: NetFn, noise: torch.Tensor, sampler: str | Sampler = Sampler.DPM_SOLVER,
               steps: int | None = None, eta: float = 0.0, generator: torch.Generator | None = None,
               clip: bool = True, progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """Draw x0 from noise [B, ...] with `sampler` over `steps` respaced steps (default: all)."""
        kind = Sampler(sampler)
        if steps is None or steps == self.num_steps:
            process = self
        else:
            process = self.respace_log_snr(steps) if kind is Sampler.DPM_SOLVER else self.respace(steps)
        if kind is Sampler.DDPM:
            return process.ddpm(net_fn, noise, generator=generator, clip=clip, progress=progress)
        if kind is Sampler.DDIM:
            return process.ddim(net_fn, noise, eta=eta, generator=generator, clip=clip, progress=progress)
        return process.dpm_solver(net_fn, noise, clip=clip, progress=progress)


def classifier_free_guidance(model: Callable[..., torch.Tensor], cond: torch.Tensor, scale: float,
                             active: Callable[[torch.Tensor], bool] | None = None) -> NetFn:
    """eps(x, t) = (1 - w) eps_uncond + w eps_cond, both from one batched call
    ``model(x2, t2, cond2, drop2)`` where `drop2` marks the unconditional half. For a v network
    the same mix of v is the same guidance: at a fixed x_t, eps is an affine function of v.

    w = 1 is the plain conditional model (one unbatched call), and so is every step where
    `active(t)` (`guidance_interval`) is false.
    """
    if scale == 1.0:
        return lambda x, t: model(x, t, cond, None)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if active is not None and not active(t):
            return model(x, t, cond, None)
        batch = x.shape[0]
        drop = torch.cat([torch.zeros(batch, dtype=torch.bool), torch.ones(batch, dtype=torch.bool)]).to(x.device)
        eps = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, cond]), drop)
        conditional, unconditional = eps[:batch], eps[batch:]
        return (1 - scale) * unconditional + scale * conditional

    return guided


def guidance_interval(process: GaussianDiffusion, low: float, high: float) -> Callable[[torch.Tensor], bool]:
    """Guidance only at noise levels sigma = sqrt((1 - abar) / abar) in (low, high] (Kynkäänniemi et
    al., 2024): at higher noise guidance pulls every sample to the same overall shape and level,
    at lower noise it changes little. `process` is the full (not respaced) process whose step
    indices the network is told; steps are judged by the batch's first timestep."""
    if not 0 <= low < high:
        raise ValueError(f"a guidance interval needs 0 <= low < high, got ({low}, {high}]")
    sigmas = ((1 - process.alphas_cumprod) / process.alphas_cumprod).sqrt()
    return lambda t: low < sigmas[int(t.flatten()[0].item())].item() <= high


def dalle2_prior_ddim(x0_fn: NetFn, alphas_cumprod: torch.Tensor, noise: Callable[[tuple[int, ...]], torch.Tensor],
                      shape: tuple[int, ...], steps: int, eta: float = 1.0) -> torch.Tensor:
    """DDIM as dalle2-pytorch 1.1.0's prior samples (``p_sample_loop_ddim``), for an x0-predicting model.

    Its quirks are part of what LAION's prior was tuned with, so they are kept: the step
    times are ``int(linspace(0, T, steps + 2))`` without the last (so sampling starts below
    T), each step's "alpha" is the cumulative alpha of the *previous* step while the noise
    estimate uses the step's own, eta defaults to 1, and all arithmetic is in float32 (the
    dtype of its buffers). `noise(shape)` supplies every Gaussian draw in order: the start,
    then one per step that does not end at time 0.
    """
    abar = alphas_cumprod.float()
    abar_prev = F.pad(abar[:-1], (1, 0), value=1.0)
    recip, recipm1 = (1 / abar).sqrt(), (1 / abar - 1).sqrt()
    total = abar.shape[0]
    times = list(reversed(torch.linspace(0.0, total, steps + 2)[:-1].int().tolist()))
    x = noise(shape)
    for time, time_next in zip(times[:-1], times[1:]):
        alpha, alpha_next = abar_prev[time], abar_prev[time_next]
        t = torch.full((shape[0],), time, dtype=torch.long, device=x.device)
        x0 = x0_fn(x, t)
        eps = (recip[time] * x - x0) / recipm1[time]
        c1 = eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
        c2 = ((1 - alpha_next) - c1.square()).sqrt()
        drawn = noise(shape) if time_next > 0 else 0.0
        x = x0 * alpha_next.sqrt() + c1 * drawn + c2 * eps
    return x
