"""Score distillation sampling (DreamFusion, Poole et al. 2022; reference §7, as threestudio computes
it): no fake score; grad = w(t) (eps_teacher(x_t) - eps) at positions U[0.02, 0.98], applied through
0.5 ||x - sg(x - grad)||^2 summed per sample and averaged over the batch. Weights are written in VP
terms (1 - alpha_bar = sigma_vp^2) so an EDM or flow teacher gets the same weighting as a VP one; eps
is the same in every parameterisation. The baseline for text-to-3D; it collapses a generator's spread
onto the teacher's modes (mode seeking), which the exact-score test shows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from potstill.core.denoiser import Denoiser
from potstill.core.objectives.base import Objective, Reduction
from potstill.core.objectives.dmd2 import matching_loss
from potstill.core.registry import OBJECTIVES
from potstill.core.tensors import per_sample
from potstill.core.time_draws import TimeOptions

SDSWeighting = Literal["sds", "uniform", "fantasia3d"]


@dataclass
class SDSOptions(TimeOptions):
    weighting: SDSWeighting = "sds"
    guidance: float = 1.0
    reduction: Reduction = "sum"


def vp_equivalent(edm_sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_vp, sigma_vp) of the VP process with the same signal-to-noise ratio."""
    alpha = 1 / (1 + edm_sigma**2).sqrt()
    return alpha, edm_sigma * alpha


def sds_weight(weighting: SDSWeighting, edm_sigma: torch.Tensor) -> torch.Tensor:
    """1 - alpha_bar ("sds"), 1 ("uniform"), or sqrt(alpha_bar) (1 - alpha_bar) ("fantasia3d")."""
    alpha, sigma = vp_equivalent(edm_sigma)
    if weighting == "sds":
        return sigma**2
    if weighting == "uniform":
        return torch.ones_like(sigma)
    return alpha * sigma**2


class SDS(Objective):
    uses_fake_score = False

    def generator_loss(self, x, cond, teacher: Denoiser, fake: Denoiser | None = None, adversary=None):
        o = self.options
        with torch.no_grad():
            t, eps, x_t = self.noisy(x.detach(), teacher.schedule)
            eps_teacher = teacher.eps(x_t, t, cond, o.guidance)
            weight = sds_weight(o.weighting, teacher.schedule.edm_sigma(t))
            grad = torch.nan_to_num(per_sample(weight, x) * (eps_teacher - eps))
        loss = matching_loss(x, grad, o.reduction)
        return loss, {"sds": loss.item(), "sds_grad_norm": grad.flatten(1).norm(dim=1).mean().item()}


OBJECTIVES.register("sds", SDSOptions)(lambda options, context: SDS(options))
