"""Shared inputs for the objective tests: an exact Gaussian teacher, a Gaussian generator with its exact
fake score, a learned (random) MLP fake score, and a way to pin an objective's draw of t and noise."""

from __future__ import annotations

import torch

from potstill.backbones.mlp import MLPBackbone, MLPOptions
from potstill.core.denoiser import Denoiser
from potstill.modalities.gaussian_mixture import GaussianMixture, GaussianMixtureDenoiser, GaussianPosteriorDenoiser
from potstill.modalities.vector import GaussianGenerator

TEACHER_MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)
TEACHER_STD = torch.tensor([0.5, 1.5], dtype=torch.float64)


def gaussian_setup(schedule):
    """(generator, exact teacher, exact fake score) with a correlated generator away from the teacher."""
    torch.manual_seed(0)
    generator = GaussianGenerator(2, init_std=0.8, init_mean=[0.3, 0.4])
    with torch.no_grad():
        generator.offdiag[1, 0] = 0.3
    teacher = GaussianMixtureDenoiser(GaussianMixture(TEACHER_MEAN[None], TEACHER_STD[None], torch.ones(1)), schedule)
    return generator, teacher, GaussianPosteriorDenoiser(generator, schedule)


def learned_fake(schedule, seed: int = 1) -> Denoiser:
    """A randomly initialised MLP fake score: a network whose inputs carry gradients like a real critic."""
    torch.manual_seed(seed)
    backbone = MLPBackbone(MLPOptions(dim=2, hidden=64, depth=2))
    return Denoiser(backbone, schedule, "edm", 1.0, (2,)).requires_grad_(False)


def pin_noise(objective, t: torch.Tensor, eps: torch.Tensor):
    """Make `objective` use these t and eps; x_t keeps its gradient to x, as the objective's own would."""
    objective.noisy = lambda x, schedule: (t, eps, schedule.add_noise(x, eps, t))
    return objective


def flat_grad(loss: torch.Tensor, params) -> torch.Tensor:
    params = list(params)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    flat = [torch.zeros(p.numel()) if g is None else g.reshape(-1) for g, p in zip(grads, params, strict=True)]
    return torch.cat(flat)
