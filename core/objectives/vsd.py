"""Diff-Instruct (Luo et al. 2023) and variational score distillation (ProlificDreamer, Wang et al.
2023; SwiftBrush): the integral-KL gradient w(t) (D_fake - D_real) with both networks stop-gradded
(reference §2). `diff_instruct` weights by 1 at EDM log-normal sigma; `vsd` by sigma_t alpha_t, which
is sigma_t^2 (eps_teacher - eps_fake) in eps space. `fake_condition_dropout` drops the fake score's conditions
while it trains, so it can be guided (ProlificDreamer drops its camera 10% of the time)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from potstill.core.denoiser import Denoiser, drop_conditions
from potstill.core.objectives.base import Objective, Reduction
from potstill.core.objectives.dmd2 import matching_loss
from potstill.core.registry import OBJECTIVES
from potstill.core.tensors import per_sample
from potstill.core.time_draws import TimeOptions, TimeSampling

VSDWeighting = Literal["diff_instruct", "vsd"]


@dataclass
class VSDOptions(TimeOptions):
    """Diff-Instruct's defaults: sigma ~ logN(-1.2, 1.2), weight 1, per-sample sum reduction."""

    weighting: VSDWeighting = "diff_instruct"
    t_sampling: TimeSampling = "dsm"
    guidance: float = 1.0
    fake_guidance: float = 1.0
    reduction: Reduction = "sum"
    fake_reduction: Reduction = "mean"
    fake_condition_dropout: float = 0.0


def vsd_weight(weighting: VSDWeighting, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample w(t) of the x0-space gradient (reference §2's table)."""
    return torch.ones_like(sigma) if weighting == "diff_instruct" else sigma * alpha


class VSD(Objective):
    """grad = w(t) (D_fake - D_real), applied through 0.5 ||x - sg(x - grad)||^2."""

    def generator_loss(self, x, cond, teacher: Denoiser, fake: Denoiser | None, adversary=None):
        o = self.options
        schedule = teacher.schedule
        with torch.no_grad():
            t, _, x_t = self.noisy(x.detach(), schedule)
            d_real = teacher.x0(x_t, t, cond, o.guidance)
            d_fake = fake.x0(x_t, t, cond, o.fake_guidance)
            weight = vsd_weight(o.weighting, schedule.alpha(t), schedule.sigma(t))
            grad = torch.nan_to_num(per_sample(weight, x) * (d_fake - d_real))
        loss = matching_loss(x, grad, o.reduction)
        return loss, {"vsd": loss.item(), "vsd_grad_norm": grad.flatten(1).norm(dim=1).mean().item()}

    def fake_score_loss(self, x, cond, fake: Denoiser, real=None):
        """Denoising score matching on detached samples, conditions dropped to the null one at
        `fake_condition_dropout` (ProlificDreamer's 10% camera dropout of its LoRA score)."""
        cond = drop_conditions(fake, cond, self.options.fake_condition_dropout, "objective.fake_condition_dropout")
        return super().fake_score_loss(x, cond, fake, real)


OBJECTIVES.register("vsd", VSDOptions)(lambda options, context: VSD(options))
