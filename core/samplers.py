"""Teacher samplers at any number of function evaluations (NFE): Euler and Heun on the
probability-flow ODE dx/dt = alpha' x0 + sigma' eps (EDM's sampler when alpha = 1), and DDIM.

They give the teacher baselines a distilled student is compared against at NFE 1..100."""

from __future__ import annotations

import itertools
from typing import Literal

import torch

from potstill.core.denoiser import Denoiser
from potstill.core.tensors import per_sample

Solver = Literal["euler", "heun", "ddim"]


def steps_for_nfe(nfe: int, solver: Solver) -> int:
    """Heun spends two evaluations per step but one on the last (to t = 0): NFE = 2 steps - 1."""
    if nfe < 1:
        raise ValueError(f"nfe must be at least 1, got {nfe}")
    if solver == "heun":
        if nfe % 2 == 0:
            raise ValueError(f"heun uses an odd number of evaluations (2 steps - 1), got nfe={nfe}")
        return (nfe + 1) // 2
    return nfe


def default_solver(nfe: int) -> Solver:
    """Heun where the NFE allows it (odd, at least 3), Euler otherwise."""
    return "heun" if nfe >= 3 and nfe % 2 == 1 else "euler"


@torch.no_grad()
def sample(denoiser: Denoiser, noise: torch.Tensor, cond=None, nfe: int = 35,
           solver: Solver | None = None, guidance: float = 1.0) -> torch.Tensor:
    """Integrate from t_max (x = sigma(t_max) noise, plus alpha(t_max) * 0) to clean data in `nfe` evaluations."""
    solver = solver or default_solver(nfe)
    schedule = denoiser.schedule
    times = schedule.sampling_times(steps_for_nfe(nfe, solver)).to(noise)
    x = per_sample(schedule.sigma(times[:1]), noise) * noise
    for t, t_next in itertools.pairwise(times):
        x0 = denoiser.x0(x, t, cond, guidance)
        if t_next == 0:
            return x0
        eps = schedule.eps_from_x0(x, x0, t.expand(x.shape[0]))
        if solver == "ddim":
            x = schedule.alpha(t_next) * x0 + schedule.sigma(t_next) * eps
            continue
        velocity = schedule.d_alpha(t) * x0 + schedule.d_sigma(t) * eps
        x_next = x + (t_next - t) * velocity
        if solver == "heun":
            x0_next = denoiser.x0(x_next, t_next, cond, guidance)
            eps_next = schedule.eps_from_x0(x_next, x0_next, t_next.expand(x.shape[0]))
            velocity_next = schedule.d_alpha(t_next) * x0_next + schedule.d_sigma(t_next) * eps_next
            x_next = x + (t_next - t) * 0.5 * (velocity + velocity_next)
        x = x_next
    return x
