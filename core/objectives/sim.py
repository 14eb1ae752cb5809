"""Score Implicit Matching (Luo et al. 2024; reference §4). The score-gradient theorem turns the
divergence int w(t) E[d(s_theta - s_teacher)] into the loss -d'(y)^T (s_fake - grad log q(x_t | x0)),
y = s_fake - s_teacher, with gradients through both networks' inputs and through x0. In x0 form:

    L = (alpha^2 / sigma^4) (D_real - D_fake) . (D_fake - x0) / sqrt(alpha^2 ||D_real - D_fake||^2 / sigma^4 + c^2)

for the pseudo-Huber d(y) = sqrt(||y||^2 + c^2) - c (its normaliser keeps its gradient), and
2 alpha^2 / sigma^4 (D_real - D_fake) . (D_fake - x0) for d = ||y||^2. `weighting: x0` multiplies by
w(t) = sigma^4 / alpha^2, measuring score differences in x0 units (bounded as sigma -> 0)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from potstill.core.denoiser import Denoiser
from potstill.core.objectives.base import Objective, Reduction
from potstill.core.objectives.sid import drop_nonfinite
from potstill.core.registry import OBJECTIVES
from potstill.core.tensors import sample_sum
from potstill.core.time_draws import TimeOptions


@dataclass
class SIMOptions(TimeOptions):
    distance: Literal["l2", "pseudo_huber"] = "pseudo_huber"
    c: float = 1.0
    weighting: Literal["x0", "none"] = "x0"
    guidance: float = 1.0
    t_low: float = 0.0
    t_high: float = 0.8
    t_grid: int = 0
    loss_scale: float = 1.0
    reduction: Reduction = "sum"
    fake_reduction: Reduction = "sum"


def sim_loss_per_sample(x: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor, alpha: torch.Tensor,
                        sigma: torch.Tensor, distance: str, c: float) -> torch.Tensor:
    """-d'(y) . (s_fake - grad log q(x_t|x0)) per sample, every factor differentiable."""
    a2_s4 = alpha**2 / sigma**4
    inner = sample_sum((y_real - y_fake) * (y_fake - x))
    if distance == "l2":
        return 2 * a2_s4 * inner
    return a2_s4 * inner / (a2_s4 * sample_sum((y_real - y_fake) ** 2) + c**2).sqrt()


class SIM(Objective):
    """SIM generator loss; the fake score trains by denoising score matching, 1:1."""

    def generator_loss(self, x, cond, teacher: Denoiser, fake: Denoiser | None, adversary=None):
        o = self.options
        schedule = teacher.schedule
        t, _, x_t = self.noisy(x, schedule)
        y_real = teacher.x0(x_t, t, cond, o.guidance)
        y_fake = fake.x0(x_t, t, cond)
        alpha, sigma = schedule.alpha(t).to(x), schedule.sigma(t).to(x)
        per_sample_loss = sim_loss_per_sample(x, y_real, y_fake, alpha, sigma, o.distance, o.c)
        if o.weighting == "x0":
            per_sample_loss = per_sample_loss * sigma**4 / alpha**2
        kept, keep = drop_nonfinite(per_sample_loss)
        loss = o.loss_scale * kept.sum() / x.shape[0]
        if o.reduction == "mean":
            loss = loss / x[0].numel()
        return loss, {"sim": loss.item(), "sim_dropped": float((~keep).sum())}


OBJECTIVES.register("sim", SIMOptions)(lambda options, context: SIM(options))
