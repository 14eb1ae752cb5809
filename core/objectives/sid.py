"""Score identity Distillation (Zhou et al. 2024; reference §3).

Per element: (y_real - y_fake) * [(y_real - x) - alpha (y_real - y_fake)] / wf with
wf = sg(mean|x - y_real|) clipped at 1e-5, y_real and y_fake evaluated on x_t = x + sigma n with
gradients through both networks' inputs (their parameters frozen), reduced as sum * 100 / batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from potstill.core.denoiser import Denoiser
from potstill.core.objectives.base import Objective, Reduction, reduce_loss
from potstill.core.registry import OBJECTIVES
from potstill.core.tensors import per_sample, sample_mean


@dataclass
class SiDOptions:
    alpha: float = 1.2
    guidance: float = 1.0
    t_low: float = 0.0
    t_high: float = 0.8
    loss_scale: float = 100.0
    wf_min: float = 1e-5
    reduction: Reduction = "sum"
    fake_reduction: Reduction = "sum"


def sid_loss_per_element(x: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor,
                         alpha: float, wf: torch.Tensor) -> torch.Tensor:
    """SiD's "L2 - alpha L1" surrogate, divided per sample by the (detached) weight factor wf."""
    diff = y_real - y_fake
    return diff * ((y_real - x) - alpha * diff) / per_sample(wf, x)


class SiD(Objective):
    """SiD generator loss; the fake score trains by denoising score matching (EDM weighting)."""

    def generator_loss(self, x, cond, teacher: Denoiser, fake: Denoiser | None):
        o = self.options
        schedule = teacher.schedule
        t = schedule.sample_t(x.shape[0], o.t_low, o.t_high).to(x)
        x_t = schedule.add_noise(x, torch.randn_like(x), t)
        y_real = teacher.x0(x_t, t, cond, o.guidance)
        y_fake = fake.x0(x_t, t, cond)
        wf = sample_mean((x - y_real).abs()).detach().float().clamp(min=o.wf_min)
        per_element = sid_loss_per_element(x, y_real, y_fake, o.alpha, wf)
        keep = torch.isfinite(per_element.flatten(1)).all(dim=1)
        # SiD drops samples whose loss is not finite; if none is left the NaN reaches the step guard.
        kept = per_element[keep] if keep.any() else per_element
        loss = o.loss_scale * reduce_loss(kept, o.reduction, x.shape[0])
        return loss, {"sid": loss.item(), "sid_wf": wf.mean().item(), "sid_dropped": float((~keep).sum())}


OBJECTIVES.register("sid", SiDOptions)(lambda options, context: SiD(options))
