"""Gaussian mixtures whose noisy scores are exact: the noisy marginal of a mixture of N(mu_k, S_k^2)
under x_t = alpha x0 + sigma eps is a mixture of N(alpha mu_k, alpha^2 S_k^2 + sigma^2), so
E[x0 | x_t] is a responsibility-weighted sum of per-component posterior means, for every schedule."""

from __future__ import annotations

import math

import torch

from potstill.core.denoiser import Denoiser
from potstill.core.schedules import Schedule
from potstill.core.tensors import per_sample


class GaussianMixture:
    """Means [K, d], per-dimension stds [K, d] and weights [K] of a diagonal Gaussian mixture."""

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor) -> None:
        self.means = means.double()
        self.stds = stds.double()
        self.weights = (weights / weights.sum()).double()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[k] + self.stds[k] * z).float()

    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        second = sum(w * (torch.diag(s**2) + torch.outer(m, m))
                     for w, m, s in zip(self.weights, self.means, self.stds, strict=True))
        mu = self.mean()
        return second - torch.outer(mu, mu)

    def _noisy_components(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
        """Per-component variances [B, K, d] and residuals x_t - alpha mu_k [B, K, d] of the noisy marginal."""
        means, stds = self.means.to(x.device), self.stds.to(x.device)
        var = alpha[:, None, None] ** 2 * stds[None] ** 2 + sigma[:, None, None] ** 2
        return var, x[:, None, :] - alpha[:, None, None] * means[None]

    def _responsibilities(self, var: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
        log_p = -0.5 * ((diff**2 / var) + var.log()).sum(-1) + self.weights.to(var.device).log()[None]
        return torch.softmax(log_p, dim=1)

    def responsibilities(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """p(component k | x_t) for noisy points x_t [B, d] at per-sample alpha, sigma [B]."""
        return self._responsibilities(*self._noisy_components(x, alpha, sigma))

    def log_density(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log p_t(x_t) [B] in float64 of the noisy marginal, a mixture of N(alpha mu_k, alpha^2 S_k^2 + sigma^2)."""
        var, diff = self._noisy_components(x.double(), alpha.double(), sigma.double())
        log_normal = -0.5 * (diff**2 / var + var.log() + math.log(2 * math.pi)).sum(-1)
        return torch.logsumexp(log_normal + self.weights.to(x.device).log()[None], dim=1)

    def posterior_mean(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_t] in float64: sum_k r_k (mu_k + alpha S_k^2 / var_k (x_t - alpha mu_k))."""
        x = x.double()
        alpha, sigma = alpha.double(), sigma.double()
        var, diff = self._noisy_components(x, alpha, sigma)
        gain = alpha[:, None, None] * self.stds.to(x.device)[None] ** 2 / var
        component_means = self.means.to(x.device)[None] + gain * diff
        return torch.einsum("bk,bkd->bd", self._responsibilities(var, diff), component_means)


class GaussianMixtureDenoiser(Denoiser):
    """The exact teacher: x0(x_t, t) = E[x0 | x_t] of the mixture under the given schedule."""

    def __init__(self, mixture: GaussianMixture, schedule: Schedule) -> None:
        sigma_data = float(mixture.covariance().diagonal().mean().sqrt())
        super().__init__(None, schedule, "x0", sigma_data, (mixture.dim,))
        self.mixture = mixture

    def identity_tensors(self) -> dict[str, torch.Tensor]:
        """The mixture's parameters: what makes this teacher this teacher (it has no network weights)."""
        m = self.mixture
        return {"means": m.means, "stds": m.stds, "weights": m.weights}

    def _raw(self, x_t, t, cond, features):
        if features is not None:
            raise ValueError("the Gaussian-mixture teacher has no inner features; put the head on the fake score")
        s = self.schedule
        return self.mixture.posterior_mean(x_t, s.alpha(t), s.sigma(t)).to(x_t.dtype), None

    def log_density(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        """log p_t(x_t) [B], exact (Uni-Instruct's `ratio: exact` reads it)."""
        return self.mixture.log_density(x_t, self.schedule.alpha(t), self.schedule.sigma(t))


class GaussianPosteriorDenoiser(Denoiser):
    """The exact fake score of a Gaussian generator N(mu, L L^T): E[x0 | x_t] =
    mu + alpha C (alpha^2 C + sigma^2 I)^-1 (x_t - alpha mu), with the generator's parameters detached
    and gradients flowing through x_t (what SiD needs)."""

    def __init__(self, generator, schedule: Schedule) -> None:
        super().__init__(None, schedule, "x0", 1.0, (generator.mean.shape[0],))
        self.generator = [generator]   # a list, so the generator's parameters are not this module's

    def _noisy_marginal(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(mu, C, alpha [B, 1, 1], covariance of x_t [B, d, d]) in float64, the generator's parameters detached."""
        g = self.generator[0]
        mu = g.mean.detach().double()
        scale = g.scale_tril().detach().double()
        cov = scale @ scale.T
        alpha = per_sample(self.schedule.alpha(t), like).double()[:, :, None]
        sigma = per_sample(self.schedule.sigma(t), like).double()[:, :, None]
        eye = torch.eye(mu.shape[0], dtype=torch.float64, device=mu.device)
        return mu, cov, alpha, alpha**2 * cov[None] + sigma**2 * eye[None]

    def _raw(self, x_t, t, cond, features):
        if features is not None:
            raise ValueError("the exact Gaussian fake score has no inner features")
        mu, cov, alpha, noisy_cov = self._noisy_marginal(t, x_t)
        residual = x_t.double() - alpha[:, :, 0] * mu[None]
        solved = torch.linalg.solve(noisy_cov, residual[..., None])[..., 0]
        return (mu[None] + alpha[:, :, 0] * (solved @ cov.T)).to(x_t.dtype), None

    def log_density(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        """log q_t(x_t) [B] of the generator's noisy marginal N(alpha mu, alpha^2 C + sigma^2 I), exact."""
        mu, _, alpha, noisy_cov = self._noisy_marginal(t, x_t)
        cholesky = torch.linalg.cholesky(noisy_cov)
        residual = (x_t.double() - alpha[:, :, 0] * mu[None])[..., None]
        whitened = torch.linalg.solve_triangular(cholesky, residual, upper=False)[..., 0]
        log_det = 2 * cholesky.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return -0.5 * (whitened.square().sum(-1) + log_det + mu.shape[0] * math.log(2 * math.pi))
