"""Score identity Distillation (Zhou et al. 2024) and its long-and-short guidance (SiD-LSG, Zhou et al.
2024b; reference §3).

Per element: (y_real - y_fake) * [(y_real - x) - alpha (y_real - y_fake)] / wf with
wf = sg(mean|x - y_real|) clipped at 1e-5, y_real and y_fake evaluated on x_t = x + sigma n with
gradients through both networks' inputs (their parameters frozen), reduced as sum * 100 / batch.

LSG: `guidance.short` is the CFG scale on the teacher when y_real is computed (kappa_4);
`guidance.long` is the CFG scale on the fake score, both inside its own denoising score matching
(kappa_1) and when y_fake is computed (kappa_2 = kappa_3). It is "long" because it acts through the
fake score's whole training."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from potstill.core.denoiser import Denoiser
from potstill.core.objectives.base import Objective, Reduction, reduce_loss
from potstill.core.registry import OBJECTIVES
from potstill.core.tensors import per_sample, sample_mean
from potstill.core.time_draws import TimeOptions


@dataclass
class LongShortGuidance:
    long: float = 1.0
    short: float = 1.0


@dataclass
class SiDOptions(TimeOptions):
    """SiD's sigma ~ Karras grid at U(0, tmax = 800/1000) positions; loss scale 100, sum reduction."""

    alpha: float = 1.2
    guidance: LongShortGuidance = field(default_factory=LongShortGuidance)
    t_low: float = 0.0
    t_high: float = 0.8
    t_grid: int = 0
    loss_scale: float = 100.0
    wf_min: float = 1e-5
    reduction: Reduction = "sum"
    fake_reduction: Reduction = "sum"


def sid_loss_per_element(x: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor,
                         alpha: float, wf: torch.Tensor) -> torch.Tensor:
    """SiD's "L2 - alpha L1" surrogate, divided per sample by the (detached) weight factor wf."""
    diff = y_real - y_fake
    return diff * ((y_real - x) - alpha * diff) / per_sample(wf, x)


def weight_factor(x: torch.Tensor, y_real: torch.Tensor, wf_min: float) -> torch.Tensor:
    """wf = sg(mean_CHW |x - y_real|), clipped below at wf_min, in float32 (SiD)."""
    return sample_mean((x - y_real).abs()).detach().float().clamp(min=wf_min)


def drop_nonfinite(per_element: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SiD drops samples whose loss is not finite; if none is left the NaN reaches the step guard."""
    keep = torch.isfinite(per_element.reshape(len(per_element), -1)).all(dim=1)
    return (per_element[keep] if keep.any() else per_element), keep


@dataclass
class SiDTerm:
    """The SiD loss with what SiDA reuses: the weight factor and the noisy input it was computed at."""

    loss: torch.Tensor
    wf: torch.Tensor
    t: torch.Tensor
    x_t: torch.Tensor
    metrics: dict[str, float]


class SiD(Objective):
    """SiD generator loss; the fake score trains by denoising score matching (EDM weighting), with the
    long guidance scale applied to its own prediction."""

    def sid_term(self, x, cond, teacher: Denoiser, fake: Denoiser) -> SiDTerm:
        """The scaled SiD loss on a fresh x_t; y_real and y_fake carry grad through their inputs."""
        o = self.options
        t, _, x_t = self.noisy(x, teacher.schedule)
        y_real = teacher.x0(x_t, t, cond, o.guidance.short)
        y_fake = fake.x0(x_t, t, cond, o.guidance.long)
        wf = weight_factor(x, y_real, o.wf_min)
        kept, keep = drop_nonfinite(sid_loss_per_element(x, y_real, y_fake, o.alpha, wf))
        loss = o.loss_scale * reduce_loss(kept, o.reduction, x.shape[0])
        metrics = {"sid": loss.item(), "sid_wf": wf.mean().item(), "sid_dropped": float((~keep).sum())}
        return SiDTerm(loss, wf, t, x_t, metrics)

    def generator_loss(self, x, cond, teacher: Denoiser, fake: Denoiser | None, adversary=None):
        term = self.sid_term(x, cond, teacher, fake)
        return term.loss, term.metrics

    @property
    def fake_training_guidance(self) -> float:
        return self.options.guidance.long


OBJECTIVES.register("sid", SiDOptions)(lambda options, context: SiD(options))
