"""f-distill (Xu et al. 2025; reference §5, as NVlabs/FastGen computes it): DMD's gradient weighted per
sample by h(r) = f''(r) r^2, with the density ratio r = p_teacher,t / q_student,t = exp(logit) read from
a discriminator trained with the non-saturating loss (real label 1) at the same x_t and t.

Logits are clamped to [-10, 10], r to [0.1, 20], divided by its mean within 10 equal-width t-bins,
and h is divided by its batch mean (+1e-6). Reverse KL has h = 1 and reduces to DMD2."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from potstill.core.denoiser import Denoiser
from potstill.core.objectives.dmd2 import DMD2, DMD2Options, matching_loss
from potstill.core.objectives.f_divergences import F_DIVERGENCES
from potstill.core.registry import OBJECTIVES
from potstill.core.schedules import Schedule
from potstill.core.tensors import per_sample

Divergence = Literal["rkl", "kl", "js", "sf", "neyman", "hellinger", "jeffreys"]   # kl: forward KL, FastGen's name


@dataclass
class FDistillOptions(DMD2Options):
    """FastGen's defaults: Jensen-Shannon, Karras-grid positions 0.002-0.998, normaliser epsilon 1e-6."""

    divergence: Divergence = "js"
    t_low: float = 0.002
    t_high: float = 0.998
    normalizer_eps: float = 1e-6
    logit_clamp: float = 10.0
    ratio_min: float = 0.1
    ratio_max: float = 20.0
    ratio_normalization: bool = True
    time_bins: int = 10


def bin_means(values: torch.Tensor, t: torch.Tensor, low: float, high: float, bins: int) -> torch.Tensor:
    """Each value's mean over the samples whose t falls in the same of `bins` equal-width bins of [low, high]."""
    index = ((t - low) / max(high - low, 1e-12) * bins).long().clamp(0, bins - 1)
    sums = torch.zeros(bins, dtype=values.dtype, device=values.device).index_add_(0, index, values)
    counts = torch.bincount(index, minlength=bins).to(values)
    return (sums / counts.clamp(min=1))[index]


def f_divergence_weights(logits: torch.Tensor, t: torch.Tensor, options: FDistillOptions,
                         schedule: Schedule) -> torch.Tensor:
    """h(r) per sample, normalised to batch mean one, from discriminator logits log(p / q)."""
    o = options
    ratio = logits.detach().float().clamp(-o.logit_clamp, o.logit_clamp).exp().clamp(o.ratio_min, o.ratio_max)
    if o.ratio_normalization:
        low, high = (float(schedule.t_at(torch.tensor(p, dtype=torch.float64))) for p in (o.t_low, o.t_high))
        ratio = ratio / bin_means(ratio, t.float(), low, high, o.time_bins)
    weights = F_DIVERGENCES["fkl" if o.divergence == "kl" else o.divergence].h(ratio)
    return weights / (weights.mean() + 1e-6)


class FDistill(DMD2):
    """h(r)-weighted distribution matching; the adversary's generator term is added by the loop."""

    needs_adversary = True
    requires_gan_term = True

    def generator_loss(self, x, cond, teacher: Denoiser, fake: Denoiser | None, adversary=None):
        grad, t, x_t = self.matching_grad(x.detach(), cond, teacher, fake)
        with torch.no_grad():
            logits = adversary.logits_at(x_t, t, cond)
            weights = f_divergence_weights(logits, t, self.options, teacher.schedule)
        loss = matching_loss(x, grad * per_sample(weights, x))
        return loss, {"fdiv": loss.item(), "fdiv_weight_max": weights.max().item(),
                      "fdiv_log_ratio": logits.mean().item()}


OBJECTIVES.register("fdistill", FDistillOptions)(lambda options, context: FDistill(options))
