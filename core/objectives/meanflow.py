"""MeanFlow as distillation (Geng et al. 2025; consistency.md §5.2, as py-meanflow and FastGen compute it). On
z_t = (1 - t) x + t eps, with x a real sample and (t, r) drawn:

    v = the teacher's velocity (z - D_teacher) / t, CFG inside (`velocity: data`: the conditional eps - x)
    du/dt = v d_z u + d_t u, by torch.func.jvp of u(z, r, t) along (v, 0, 1), under no_grad
    target = v - (t - r) du/dt  (the MeanFlow identity u = v - (t - r) du/dt, stopped)
    loss = sg(w) ||u_theta(z, r, t) - target||^2,  w = 1 / (||delta||^2 + c)^p  (adaptive weighting)

u_theta from a separate forward with grad. No samples for an adversary: the student's output is a velocity."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from potstill.core import parallel
from potstill.core.config import RULES, ConfigError, Rule
from potstill.core.denoiser import Denoiser
from potstill.core.jvp import jvp_without_grad, refuse_partitioned_student
from potstill.core.meanflow import MeanFlowGenerator, flow_velocity
from potstill.core.objectives.base import Objective
from potstill.core.registry import OBJECTIVES
from potstill.core.tensors import per_sample, sample_sum


@dataclass
class MeanFlowOptions:
    """`velocity`: `teacher` (distillation) or `data` (MeanFlow from scratch on the conditional velocity);
    `guidance`: CFG on the teacher inside v; times: t and r logit-normal (`t_mean`, `t_std`; `r_mean`, `r_std`), t
    the larger, and a share `interval_share` of samples with r < t, the rest r = t (flow matching; py-meanflow's
    CIFAR-10 values); `adaptive_p`, `adaptive_c`: the adaptive weight 1 / (||delta||^2 + c)^p (p = 0: plain
    squared error)."""

    velocity: Literal["teacher", "data"] = "teacher"
    guidance: float = 1.0
    t_mean: float = -0.6
    t_std: float = 1.6
    r_mean: float = -4.0
    r_std: float = 1.6
    interval_share: float = 0.75
    adaptive_p: float = 0.75
    adaptive_c: float = 1e-3


RULES[MeanFlowOptions] = {"interval_share": Rule(lambda v: 0 <= v <= 1, "in [0, 1]"),
                          "t_std": Rule(lambda v: v > 0, "greater than 0"),
                          "r_std": Rule(lambda v: v > 0, "greater than 0"),
                          "adaptive_p": Rule(lambda v: v >= 0, "at least 0"),
                          "adaptive_c": Rule(lambda v: v > 0, "greater than 0")}


def meanflow_target(average_velocity: Callable[..., torch.Tensor], z: torch.Tensor, r: torch.Tensor,
                    t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sg(v - (t - r) du/dt), du/dt by forward mode along (v, 0, 1) on (z, r, t), without grad."""
    _, dudt = jvp_without_grad(average_velocity, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    return v - per_sample(t - r, z).to(v) * dudt.to(v)


class MeanFlow(Objective):
    """MeanFlow distillation of a `meanflow` student; no fake score."""

    uses_fake_score = False
    samples_generator = False

    def draw_times(self, generator: MeanFlowGenerator, n: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """(t, r) [n] each: two logit-normal draws, t the larger clamped to the student's range; r = t outside the
        interval share."""
        o = self.options

        def draw(m: int) -> torch.Tensor:
            a = torch.sigmoid(o.t_mean + o.t_std * torch.randn(m, dtype=torch.float64))
            b = torch.sigmoid(o.r_mean + o.r_std * torch.randn(m, dtype=torch.float64))
            interval = torch.rand(m, dtype=torch.float64) < o.interval_share
            t = torch.maximum(a, b).clamp(generator.t_min, generator.t_max)
            return torch.stack([t, torch.where(interval, torch.minimum(torch.minimum(a, b), t), t)])

        t, r = parallel.draw_local(lambda m: draw(m).T, n).T.to(device)
        return t, r

    def generator_step(self, generator, real, cond, teacher: Denoiser, fake=None, adversary=None):
        o = self.options
        t, r = (s.to(real.dtype) for s in self.draw_times(generator, real.shape[0], real.device))
        eps = parallel.randn_like(real)
        z = per_sample(1 - t, real) * real + per_sample(t, real) * eps
        with torch.no_grad():
            v = flow_velocity(teacher, z, t, cond, o.guidance) if o.velocity == "teacher" else eps - real

        def average_velocity(z_in: torch.Tensor, r_in: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
            return generator.average_velocity(z_in, r_in, t_in, cond)

        target = meanflow_target(average_velocity, z, r, t, v)
        delta = sample_sum((average_velocity(z, r, t).double() - target.double()).square())
        weight = (delta.detach() + o.adaptive_c) ** -o.adaptive_p
        loss = (weight * delta).mean()
        metrics = {"meanflow": loss.item(), "meanflow_delta": delta.mean().item()}
        return loss, metrics, None


def build_meanflow(options: MeanFlowOptions, context) -> MeanFlow:
    if not isinstance(context.generator, MeanFlowGenerator):
        raise ConfigError("generator.kind: meanflow trains an average-velocity student; set generator.kind: meanflow")
    refuse_partitioned_student(context.engine, "meanflow")
    return MeanFlow(options)


OBJECTIVES.register("meanflow", MeanFlowOptions)(build_meanflow)
