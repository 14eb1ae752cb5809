"""How a loss draws its noise times, shared by the objectives and the discriminators: uniform positions
on the schedule (on a grid when `t_grid` is set, DMD2's U{20..980}), the schedule's own training draw
(EDM's log-normal sigma, Diff-Instruct), or logit-normal positions (LADD's high-noise bias)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from potstill.core import parallel
from potstill.core.schedules import Schedule

TimeSampling = Literal["uniform", "dsm", "logit_normal"]


@dataclass
class TimeOptions:
    """`uniform`: positions in [t_low, t_high] (a `t_grid`-point grid when non-zero); `dsm`: the
    schedule's denoising draw; `logit_normal`: positions sigmoid(N(t_mean, t_std)) clamped to
    [t_low, t_high]."""

    t_sampling: TimeSampling = "uniform"
    t_low: float = 0.02
    t_high: float = 0.98
    t_grid: int = 1000
    t_mean: float = 0.0
    t_std: float = 1.0


def draw_times(options: TimeOptions, schedule: Schedule, n: int) -> torch.Tensor:
    """n times in the schedule's units, drawn as `options` says (this rank's rows of the global draw)."""
    return parallel.draw_local(lambda m: _draw(options, schedule, m), n)


def _draw(options: TimeOptions, schedule: Schedule, n: int) -> torch.Tensor:
    if options.t_sampling == "dsm":
        return schedule.sample_dsm_t(n)
    if options.t_sampling == "logit_normal":
        position = torch.sigmoid(options.t_mean + options.t_std * torch.randn(n, dtype=torch.float64))
        return schedule.t_at(position.clamp(options.t_low, options.t_high)).float()
    return schedule.sample_t(n, options.t_low, options.t_high, options.t_grid)
