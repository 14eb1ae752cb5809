"""How a loss draws its noise times, shared by the objectives and the discriminators: uniform positions
on the schedule (on a grid when `t_grid` is set, DMD2's U{20..980}), the schedule's own training draw
(EDM's log-normal sigma, Diff-Instruct), logit-normal positions (LADD's high-noise bias), or one position for
the whole batch annealed over the run (CFD's `t_scheduler.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal

import numpy as np
import torch

from potstill.core import parallel
from potstill.core.config import RULES, Rule
from potstill.core.schedules import Schedule

TimeSampling = Literal["uniform", "dsm", "logit_normal", "annealed"]
CFD_ANNEAL = [[0.0, 0.0], [0.1, 0.3], [0.5, 0.6], [1.0, 0.8]]


@dataclass
class TimeOptions:
    """`uniform`: positions in [t_low, t_high] (a `t_grid`-point grid when non-zero); `dsm`: the
    schedule's denoising draw; `logit_normal`: positions sigmoid(N(t_mean, t_std)) clamped to
    [t_low, t_high]; `annealed`: every sample at position t_high - (t_high - t_low) p, p piecewise linear in the
    run's progress through the [progress, p] knots of `t_anneal` (CFD's default: 0 -> 0.3 -> 0.6 -> 0.8 at
    0, 10%, 50% and 100% of the steps)."""

    t_sampling: TimeSampling = "uniform"
    t_low: float = 0.02
    t_high: float = 0.98
    t_grid: int = 1000
    t_mean: float = 0.0
    t_std: float = 1.0
    t_anneal: list[list[float]] = field(default_factory=lambda: [list(k) for k in CFD_ANNEAL])


def _knots_hold(knots: list[list[float]]) -> bool:
    """CFD's anneal knots: [progress, position] pairs, progress rising strictly from 0 to 1, positions in [0, 1]."""
    progress = [k[0] for k in knots if len(k) == 2]
    return (len(progress) == len(knots) >= 2 and progress[0] == 0 and progress[-1] == 1
            and all(a < b for a, b in pairwise(progress)) and all(0 <= k[1] <= 1 for k in knots))


RULES[TimeOptions] = {"t_anneal": Rule(_knots_hold, "[progress, position] pairs with progress rising from 0 to 1 "
                                                    "and each position in [0, 1]")}


def anneal_position(options: TimeOptions, progress: float) -> float:
    """The annealed position at `progress` in [0, 1] of the run: p interpolated between the `t_anneal` knots."""
    p = float(np.interp(progress, [k[0] for k in options.t_anneal], [k[1] for k in options.t_anneal]))
    return options.t_high - (options.t_high - options.t_low) * p


def draw_times(options: TimeOptions, schedule: Schedule, n: int, progress: float | None = None) -> torch.Tensor:
    """n times in the schedule's units, drawn as `options` says (this rank's rows of the global draw); an
    annealed draw reads the run's `progress`."""
    if options.t_sampling == "annealed":
        if progress is None:
            raise ValueError("t_sampling: 'annealed' follows a run's progress, which only objectives are given; "
                             "choose another draw here")
        return schedule.t_at(torch.full((n,), anneal_position(options, progress), dtype=torch.float64)).float()
    return parallel.draw_local(lambda m: _draw(options, schedule, m), n)


def log_snr_slope(schedule: Schedule, position: torch.Tensor) -> torch.Tensor:
    """d lambda / d position [n] in float64, lambda = log(alpha^2 / sigma^2) at t = t_at(position): how much
    log-SNR a unit of position covers, for weights that make a draw uniform in position unbiased in lambda."""
    with torch.enable_grad():
        p = position.detach().double().requires_grad_(True)
        t = schedule.t_at(p)
        log_snr = 2 * (schedule.alpha(t).log() - schedule.sigma(t).log())
        return torch.autograd.grad(log_snr.sum(), p)[0]


def _draw(options: TimeOptions, schedule: Schedule, n: int) -> torch.Tensor:
    if options.t_sampling == "dsm":
        return schedule.sample_dsm_t(n)
    if options.t_sampling == "logit_normal":
        position = torch.sigmoid(options.t_mean + options.t_std * torch.randn(n, dtype=torch.float64))
        return schedule.t_at(position.clamp(options.t_low, options.t_high)).float()
    return schedule.sample_t(n, options.t_low, options.t_high, options.t_grid)
