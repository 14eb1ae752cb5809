"""Consistent Flow Distillation (Yan et al. 2025; reference §7, as `stable_diffusion_unified_guidance.py`
computes it): grad = x - D(alpha x + sigma eps) with the teacher's guided x0 D, i.e. w = sigma / alpha on
(eps_teacher - eps), at one time shared by the batch and annealed from high to low noise over the run, with the
modality's noise hook supplying eps (multi-view consistent noise for text-to-3D; i.i.d. without one). The loss
is the anchor's MSE(sum) / B with no 1/2, so the gradient in x is 2 (x - D). With a fixed eps the fixed point on
a Gaussian teacher N(mu, s^2 I) is mu + s^2 (alpha / sigma) eps."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from potstill.core.denoiser import Denoiser
from potstill.core.objectives.base import Objective, Reduction
from potstill.core.objectives.dmd2 import matching_loss
from potstill.core.registry import OBJECTIVES
from potstill.core.time_draws import TimeOptions, TimeSampling


@dataclass
class CFDOptions(TimeOptions):
    """CFD's defaults: t annealed (`t_anneal`, shared by the batch), guidance in the standard u + s (c - u) form
    (the anchor's text + s (text - uncond) with s = 70 is s = 71 here), summed per sample."""

    t_sampling: TimeSampling = "annealed"
    guidance: float = 1.0
    reduction: Reduction = "sum"


class CFD(Objective):
    uses_fake_score = False

    def generator_loss(self, x, cond, teacher: Denoiser, fake: Denoiser | None = None, adversary=None):
        o = self.options
        with torch.no_grad():
            t, _, x_t = self.noisy(x.detach(), teacher.schedule)
            grad = torch.nan_to_num(x.detach() - teacher.x0(x_t, t, cond, o.guidance))
        loss = 2 * matching_loss(x, grad, o.reduction)          # ||x - sg(x - grad)||^2: gradient 2 grad
        return loss, {"cfd": loss.item(), "cfd_grad_norm": grad.flatten(1).norm(dim=1).mean().item(),
                      "cfd_t": float(t[0])}


OBJECTIVES.register("cfd", CFDOptions)(lambda options, context: CFD(options))
