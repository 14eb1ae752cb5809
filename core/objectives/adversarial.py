"""Adversarial distillation as objectives (reference §8). `add`: ADD's distillation term
lambda c(t) ||x - sg(D_teacher(renoise(x, t)))||^2 with c(t) = alpha_bar_t (the paper's exponential
weighting, lambda = 2.5), with the frozen-encoder discriminator `add` unless the config names another.
`ladd`, `apt` and `arc`: no divergence at all; the adversary of the same name gives the whole generator loss.
Any adversary can instead be added to a divergence objective through the config's `adversary`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from potstill.core.denoiser import Denoiser
from potstill.core.objectives.base import Objective
from potstill.core.objectives.sds import vp_equivalent
from potstill.core.registry import OBJECTIVES
from potstill.core.tensors import sample_mean
from potstill.core.time_draws import TimeOptions


@dataclass
class ADDOptions(TimeOptions):
    distillation_weight: float = 2.5
    weighting: Literal["exponential", "uniform"] = "exponential"
    guidance: float = 1.0


class ADD(Objective):
    uses_fake_score = False
    default_adversary = "add"

    def generator_loss(self, x, cond, teacher: Denoiser, fake: Denoiser | None = None, adversary=None):
        o = self.options
        with torch.no_grad():
            t, _, x_t = self.noisy(x.detach(), teacher.schedule)
            target = teacher.x0(x_t, t, cond, o.guidance)
            alpha_vp, _ = vp_equivalent(teacher.schedule.edm_sigma(t))
            weight = alpha_vp**2 if o.weighting == "exponential" else torch.ones_like(alpha_vp)
        loss = o.distillation_weight * (weight * sample_mean((x - target) ** 2)).mean()
        return loss, {"add_distill": loss.item()}


class AdversarialOnly(Objective):
    """The generator loss is the adversary's alone (LADD, APT, ARC); no fake score is trained."""

    uses_fake_score = False

    def __init__(self, adversary: str) -> None:
        super().__init__(None)
        self.default_adversary = adversary

    def generator_loss(self, x, cond, teacher: Denoiser, fake: Denoiser | None = None, adversary=None):
        return torch.zeros((), device=x.device), {}


OBJECTIVES.register("add", ADDOptions)(lambda options, context: ADD(options))
OBJECTIVES.register("ladd")(lambda options, context: AdversarialOnly("ladd"))
OBJECTIVES.register("apt")(lambda options, context: AdversarialOnly("apt"))
OBJECTIVES.register("arc")(lambda options, context: AdversarialOnly("arc"))
