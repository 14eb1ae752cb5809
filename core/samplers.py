"""Teacher samplers at any number of function evaluations (NFE): Euler and Heun on the
probability-flow ODE dx/dt = alpha' x0 + sigma' eps (EDM's sampler when alpha = 1), DDIM, and ping-pong
(x0, then re-noised with fresh noise to the next time: the few-step students' sampler, ARC's `pingpong`).

They give the teacher baselines a distilled student is compared against at NFE 1..100."""

from __future__ import annotations

import itertools
from typing import Literal

import torch

from potstill.core import parallel
from potstill.core.denoiser import Denoiser
from potstill.core.tensors import per_sample

Solver = Literal["euler", "heun", "ddim", "pingpong"]


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
    times = denoiser.schedule.sampling_times(steps_for_nfe(nfe, solver)).to(noise)
    return solve(denoiser, noise, times, cond, solver, guidance)[0]


@torch.no_grad()
def solve(denoiser: Denoiser, noise: torch.Tensor, times: torch.Tensor, cond=None, solver: Solver = "euler",
          guidance: float = 1.0, keep: list[float] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The ODE solved along the decreasing grid `times` (ending at 0) from x = sigma(times[0]) noise: the clean
    endpoint, and the state x_t at each time in `keep` (each must be a grid point)."""
    schedule = denoiser.schedule
    grid = [float(t) for t in times]
    missing = [t for t in keep if t not in grid]
    if missing:
        raise ValueError(f"solve: kept times {missing} are not on the grid {grid}")
    kept: dict[float, torch.Tensor] = {}
    x = per_sample(schedule.sigma(times[:1]), noise) * noise
    for t, t_next in itertools.pairwise(times):
        if float(t) in keep:
            kept[float(t)] = x
        x = _step(denoiser, x, t, t_next, cond, solver, guidance)
    return x, [kept[t] for t in keep]


def _step(denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, cond, solver: Solver,
          guidance: float) -> torch.Tensor:
    """One solver step from t to t_next; the step to t_next = 0 returns the denoised x0."""
    schedule = denoiser.schedule
    x0 = denoiser.x0(x, t, cond, guidance)
    if t_next == 0:
        return x0
    if solver == "pingpong":
        return schedule.add_noise(x0, parallel.randn_like(x0), t_next.expand(x.shape[0]))
    eps = schedule.eps_from_x0(x, x0, t.expand(x.shape[0]))
    if solver == "ddim":
        return schedule.alpha(t_next) * x0 + schedule.sigma(t_next) * eps
    velocity = schedule.d_alpha(t) * x0 + schedule.d_sigma(t) * eps
    x_next = x + (t_next - t) * velocity
    if solver != "heun":
        return x_next
    x0_next = denoiser.x0(x_next, t_next, cond, guidance)
    eps_next = schedule.eps_from_x0(x_next, x0_next, t_next.expand(x.shape[0]))
    velocity_next = schedule.d_alpha(t_next) * x0_next + schedule.d_sigma(t_next) * eps_next
    return x + (t_next - t) * 0.5 * (velocity + velocity_next)
