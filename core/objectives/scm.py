"""Continuous-time consistency distillation, sCD (Lu & Song 2024; consistency.md §3, as SANA-Sprint and FastGen
compute it), and sCT with `velocity: data`. In TrigFlow (x_t = cos t x0 + sin t z, z ~ N(0, sigma_d^2)), with t =
arctan(sigma / sigma_d) for sigma log-normal(p_mean, p_std) and x0 a real sample:

    dx_t/dt = sigma_d F_teacher(x_t / sigma_d, t)  (CFG inside; sCT: cos t z - sin t x0)
    J = cos t sin t dF/dt, by torch.func.jvp of F(x~, t) at (x_t / sigma_d, t) along (cos t sin t dx_t/dt / sigma_d,
        cos t sin t), under no_grad in float32 with the math attention kernel
    g = -cos^2 t (sigma_d F- - dx_t/dt) - r (cos t sin t x_t + sigma_d J),  r = min(1, progress / tangent_warmup)
    loss = w(t) e^-logvar ||F_theta - F- - g / (||g|| + c)||^2 / D + logvar,  w = 1 / (sigma_d tan t)

F- = sg(F_theta) (a semi-gradient: no target network), from a separate forward with grad, the loss in float64.
With an adversary (SANA-Sprint's sCM + LADD, Chen et al. 2025; consistency.md §4.3) the student's adversarial
samples, in both phases, are f at real samples noised with fresh noise at a drawn level, the top level instead
for a share `adversarial_max_time` of them (SANA's max-time weighting).
The student's F is read from its Denoiser through `core/trigflow.py`, so any teacher schedule works; its
consistency function is the network's own x0 (`generator.parameterisation: trigflow`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from potstill.core import parallel
from potstill.core.config import RULES, ConfigError, Rule
from potstill.core.consistency import ConsistencyGenerator
from potstill.core.denoiser import Denoiser
from potstill.core.jvp import jvp_without_grad, refuse_partitioned_student
from potstill.core.objectives.base import Objective
from potstill.core.registry import OBJECTIVES
from potstill.core.tensors import per_sample, sample_sum
from potstill.core.trigflow import trig_time, trigflow_velocity, trigflow_x0


@dataclass
class SCMOptions:
    """`sigma_data`: TrigFlow's sigma_d; `p_mean`, `p_std`: the log-normal of sigma before the tan transform
    (FastGen's CIFAR -1.0, 1.4); `velocity`: `teacher` (sCD) or `data` (sCT, the conditional velocity);
    `guidance`: CFG on the teacher inside dx/dt; `tangent_warmup`: the share of the run over which r rises from 0
    to 1 (0: r = 1); `tangent_norm`: `l2` (SANA) or `rms` (FastGen) with `tangent_c`; `prior_weighting`: w =
    1 / (sigma_d tan t); `adaptive_weighting`: the generator's logvar head (generator.logvar_head: true)."""

    sigma_data: float = 0.5
    p_mean: float = -1.0
    p_std: float = 1.4
    velocity: Literal["teacher", "data"] = "teacher"
    guidance: float = 1.0
    tangent_warmup: float = 0.1
    tangent_norm: Literal["l2", "rms"] = "rms"
    tangent_c: float = 0.1
    prior_weighting: bool = True
    adaptive_weighting: bool = True
    adversarial_max_time: float = 0.5


RULES[SCMOptions] = {"sigma_data": Rule(lambda v: v > 0, "greater than 0"),
                     "adversarial_max_time": Rule(lambda v: 0 <= v <= 1, "in [0, 1]"),
                     "tangent_warmup": Rule(lambda v: 0 <= v <= 1, "in [0, 1]"),
                     "tangent_c": Rule(lambda v: v > 0, "greater than 0")}


def scm_tangent(velocity, x_t: torch.Tensor, t: torch.Tensor, dxdt: torch.Tensor, sigma_data: float,
                r: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(F-, g): the student's velocity without grad and the cos t-scaled tangent of §3.1, J by forward mode along
    the rearranged tangents (cos t sin t dx_t/dt / sigma_d, cos t sin t), in float32 at least (autocast off) through
    the math attention kernel (the fused ones have no forward-mode derivative); `velocity(x~, t)` is F at
    x_t = sigma_d x~."""
    cos, sin = torch.cos(t), torch.sin(t)
    cs = per_sample(cos * sin, x_t).to(x_t)
    f_minus, jvp = jvp_without_grad(velocity, (x_t / sigma_data, t), (cs * dxdt / sigma_data, cos * sin))
    cos2 = per_sample(cos**2, x_t).to(x_t)
    g = -cos2 * (sigma_data * f_minus - dxdt) - r * (cs * x_t + sigma_data * jvp)
    return f_minus, g


class SCM(Objective):
    """sCD / sCT on a consistency student with the TrigFlow parameterisation; no fake score."""

    uses_fake_score = False

    def warmup(self) -> float:
        o = self.options
        return 1.0 if o.tangent_warmup == 0 else min(1.0, self.progress / o.tangent_warmup)

    def draw_sigmas(self, generator: ConsistencyGenerator, n: int, device: torch.device) -> torch.Tensor:
        """n EDM sigmas, log-normal(p_mean, p_std) clamped to the student's range, float64 (this rank's rows)."""
        o = self.options
        log_sigma = parallel.draw_local(lambda m: o.p_mean + o.p_std * torch.randn(m, dtype=torch.float64), n)
        return log_sigma.exp().clamp(generator.sigma_min, generator.sigma_max).to(device)

    def adversarial_sample(self, generator: ConsistencyGenerator, real: torch.Tensor, cond) -> torch.Tensor:
        """f at `real` noised with fresh noise to drawn sigmas, each replaced by sigma_max with probability
        `adversarial_max_time` (SANA-Sprint's student sample for LADD, `train_scm_ladd.py`)."""
        n = real.shape[0]
        sigma = self.draw_sigmas(generator, n, real.device)
        top = parallel.draw_local(lambda m: torch.rand(m, dtype=torch.float64), n).to(real.device)
        sigma = torch.where(top < self.options.adversarial_max_time, generator.sigma_max, sigma)
        return generator.consistency(real + per_sample(sigma, real).to(real) * parallel.randn_like(real), sigma, cond)

    def critic_samples(self, generator: ConsistencyGenerator, real: torch.Tensor, cond) -> torch.Tensor:
        return self.adversarial_sample(generator, real, cond)

    def generator_step(self, generator, real, cond, teacher: Denoiser, fake=None, adversary=None):
        o, sd = self.options, self.options.sigma_data
        t = trig_time(self.draw_sigmas(generator, real.shape[0], real.device), sd)
        z = sd * parallel.randn_like(real)
        cos, sin = per_sample(torch.cos(t), real).to(real), per_sample(torch.sin(t), real).to(real)
        x_t = cos * real + sin * z
        with torch.no_grad():
            dxdt = (sd * trigflow_velocity(teacher, x_t, t, cond, sd, o.guidance) if o.velocity == "teacher"
                    else cos * z - sin * real)

        def velocity(x_scaled: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
            return trigflow_velocity(generator.denoiser, sd * x_scaled, times, cond, sd, generator.guidance)

        r = self.warmup()
        f_minus, g = scm_tangent(velocity, x_t, t, dxdt, sd, r)
        dim = real[0].numel()
        norm = sample_sum(g.double().square()).sqrt() / (math.sqrt(dim) if o.tangent_norm == "rms" else 1.0)
        g_hat = g.double() / per_sample(norm + o.tangent_c, g)
        f_theta = velocity(x_t / sd, t)
        residual = sample_sum((f_theta.double() - f_minus.double() - g_hat).square()) / dim
        weight = 1 / (sd * torch.tan(t)) if o.prior_weighting else torch.ones_like(t)
        logvar = generator.logvar(t).double() if o.adaptive_weighting else torch.zeros_like(t)
        loss = (weight * torch.exp(-logvar) * residual + logvar).mean()
        metrics = {"scm": loss.item(), "scm_tangent_norm": norm.mean().item(), "scm_r": r}
        samples = (trigflow_x0(x_t, t, f_theta, sd) if adversary is None
                   else self.adversarial_sample(generator, real, cond))
        return loss, metrics, samples


def build_scm(options: SCMOptions, context) -> SCM:
    generator = context.generator
    if not isinstance(generator, ConsistencyGenerator) or generator.parameterisation != "trigflow":
        raise ConfigError("generator.parameterisation: scm trains a consistency student in TrigFlow; set "
                          "generator.kind: consistency with parameterisation: trigflow")
    if options.adaptive_weighting and generator.logvar is None:
        raise ConfigError("objective.adaptive_weighting: needs the student's logvar head; set generator.logvar_head: "
                          "true, or adaptive_weighting: false")
    refuse_partitioned_student(context.engine, "scm")
    return SCM(options)


OBJECTIVES.register("scm", SCMOptions)(build_scm)
