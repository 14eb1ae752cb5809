"""TrigFlow (Lu & Song 2024; consistency.md §1): x_t = cos t x0 + sin t z, z ~ N(0, sigma_d^2 I), t in [0, pi/2],
with the probability-flow velocity dx_t/dt = sigma_d F and the consistency function f = cos t x_t - sin t sigma_d F.
Any teacher's x0-prediction D is read in TrigFlow by matching signal-to-noise ratios: the schedule's time s with
tan t = sigma_s / (sigma_d alpha_s) sees x_s = x_t alpha_s / cos t (= x_t sqrt(alpha_s^2 + sigma_s^2 / sigma_d^2),
FastGen's `TrigFlowPrecond`), and F = (cos t x_t - D) / (sigma_d sin t). For an EDM network this is minus its raw
output, for a flow network SANA-Sprint's map of its velocity, for VP at sigma_d = 1 its v-prediction (§1.2-1.4)."""

from __future__ import annotations

import torch

from potstill.core.consistency import edm_point
from potstill.core.denoiser import Denoiser
from potstill.core.tensors import per_sample


def trig_time(edm_sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """t = arctan(sigma / sigma_d): the TrigFlow time of an EDM noise level sigma (sigma_s / alpha_s)."""
    return torch.atan(edm_sigma / sigma_data)


def schedule_point(denoiser: Denoiser, x_t: torch.Tensor, t: torch.Tensor,
                   sigma_data: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_s, s): the teacher schedule's noisy input and time with the signal-to-noise ratio of TrigFlow's (x_t, t)."""
    return edm_point(denoiser.schedule, x_t / per_sample(torch.cos(t), x_t).to(x_t), sigma_data * torch.tan(t.double()))


def trigflow_velocity(denoiser: Denoiser, x_t: torch.Tensor, t: torch.Tensor, cond, sigma_data: float,
                      guidance: float = 1.0) -> torch.Tensor:
    """F(x_t / sigma_d, t) of any Denoiser, from its x0 at the matching point of its own schedule (CFG inside)."""
    x_s, s = schedule_point(denoiser, x_t, t, sigma_data)
    d = denoiser.x0(x_s, s, cond, guidance)
    cos, sin = per_sample(torch.cos(t), x_t).to(x_t), per_sample(torch.sin(t), x_t).to(x_t)
    return (cos * x_t - d) / (sigma_data * sin)


def trigflow_x0(x_t: torch.Tensor, t: torch.Tensor, velocity: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """f = cos t x_t - sin t sigma_d F: the clean sample a TrigFlow velocity points to (the consistency function)."""
    cos, sin = per_sample(torch.cos(t), x_t).to(x_t), per_sample(torch.sin(t), x_t).to(x_t)
    return cos * x_t - sin * sigma_data * velocity
