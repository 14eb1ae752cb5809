"""DMD / DMD2 distribution matching (Yin et al. 2023, 2024; reference §1).

grad = (D_fake - D_real) / mean_CHW |x - D_real| on x_t = alpha x + sigma eps with t drawn on the
1000-point grid between positions 0.02 and 0.98, applied through 0.5 mse(x, sg(x - grad)). The
paper's form multiplies by alpha_t; DMD2's code drops it (equal for EDM, not for VP or flow)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from potstill.core.denoiser import Denoiser
from potstill.core.objectives.base import Objective, Reduction
from potstill.core.registry import OBJECTIVES
from potstill.core.tensors import per_sample, sample_mean
from potstill.core.time_draws import TimeOptions


@dataclass
class DMD2Options(TimeOptions):
    guidance: float = 1.0
    gradient_form: Literal["dmd2", "paper"] = "dmd2"
    normalize: bool = True
    normalizer_eps: float = 0.0
    fake_reduction: Reduction = "mean"


def distribution_matching_grad(x: torch.Tensor, d_real: torch.Tensor, d_fake: torch.Tensor,
                               normalize: bool = True, eps: float = 0.0) -> torch.Tensor:
    """(D_fake - D_real) / (mean|x - D_real| + eps) per sample, NaNs removed as DMD2 does (which has
    eps = 0; FastGen adds 1e-6)."""
    grad = d_fake - d_real
    if normalize:
        grad = grad / per_sample(sample_mean((x - d_real).abs()) + eps, x)
    return torch.nan_to_num(grad)


def matching_loss(x: torch.Tensor, grad: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """0.5 ||x - sg(x - grad)||^2, reduced: its gradient in x is grad (divided by the reduction's count)."""
    per_element = 0.5 * F.mse_loss(x, (x - grad).detach(), reduction="none")
    return per_element.mean() if reduction == "mean" else per_element.sum() / x.shape[0]


class DMD2(Objective):
    """Distribution-matching gradient; the fake score trains by plain denoising score matching."""

    @torch.no_grad()
    def matching_grad(self, x, cond, teacher: Denoiser, fake: Denoiser) -> tuple[torch.Tensor, ...]:
        """(grad, t, x_t): DMD's per-element gradient at freshly drawn t and noise."""
        o = self.options
        t, _, x_t = self.noisy(x, teacher.schedule)
        d_real = teacher.x0(x_t, t, cond, o.guidance)
        d_fake = fake.x0(x_t, t, cond)
        grad = distribution_matching_grad(x, d_real, d_fake, o.normalize, o.normalizer_eps)
        if o.gradient_form == "paper":
            grad = grad * per_sample(teacher.schedule.alpha(t), x)
        return grad, t, x_t

    def generator_loss(self, x, cond, teacher: Denoiser, fake: Denoiser | None, adversary=None):
        grad, _, _ = self.matching_grad(x.detach(), cond, teacher, fake)
        loss = matching_loss(x, grad)
        return loss, {"dm": loss.item(), "dm_grad_norm": grad.flatten(1).norm(dim=1).mean().item()}


OBJECTIVES.register("dmd2", DMD2Options)(lambda options, context: DMD2(options))
