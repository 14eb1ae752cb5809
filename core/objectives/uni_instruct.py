"""Uni-Instruct (Wang et al. 2025, arXiv 2505.20755; reference uni_instruct.md): one-step distillation by the
expanded f-divergence D_f(p_0 || q_0) = int (SNR / 2) E_q[h(r) ||D_p - D_q||^2] dlambda (§1), through the surrogate
of Form B in x0 form (§2.3), per sample and summed over elements:

    (SNR / 2) [sg(h - r h') ||Delta||^2 + 2 sg(h) Delta . e0]                 SIM-like and Fisher terms
  + (SNR^2 / 2) sg[(-r^2 h'' ||Delta||^2 + 2 r h' Delta . e0) Delta] . x0      DI-like term

with Delta = D_p(x_t) - D_q(x_t), e0 = D_q(x_t) - x0 and x_t = alpha x0 + sigma eps; both networks frozen, the
gradient flowing through their input x_t and through x0; h, h', h'' (`f_divergences.py`) at the stop-gradient
ratio r = p_t / q_t (teacher over student). The DI weight's second part, 2 r h' Delta . e0, is missing from the
public code (§2.4); without it forward KL's gradient is 29% off."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from potstill.core import parallel
from potstill.core.config import ConfigError
from potstill.core.denoiser import Denoiser
from potstill.core.objectives.base import Objective
from potstill.core.objectives.f_divergences import F_DIVERGENCES, FDivergence
from potstill.core.objectives.sid import weight_factor
from potstill.core.registry import OBJECTIVES
from potstill.core.tensors import per_sample, sample_sum
from potstill.core.time_draws import TimeOptions, draw_times, log_snr_slope

UniDivergence = Literal["rkl", "fkl", "jeffreys", "js", "pearson", "neyman", "hellinger"]


@dataclass
class UniInstructOptions(TimeOptions):
    """`divergence`: f in D_f(p || q) = E_q f(p / q). `ratio`: `exact` (a teacher and a fake score with exact
    noisy log densities: the mixture teacher against the Gaussian generator's exact fake score) or
    `discriminator` (the adversary's logit at the same x_t and t, whose optimum under its BCE loss is
    log p_t / q_t; r = exp(clamp(logit, +-logit_clamp)), divided by its batch mean with `self_normalize`, since
    E_q[r] = 1). `weighting`: `unbiased` draws positions uniformly on [t_low, t_high] (t_grid 0) and weights by
    |dlambda / dposition| (t_high - t_low), so the expected gradient is that of D_f(p_0 || q_0) restricted to
    those log-SNRs; `x0` by 2 / SNR (score differences in x0 units); `sid` by 2 / (SNR wf) with SiD's
    normaliser wf = sg(mean |x0 - D_p|), as the public code (with it, rkl is 2 x SiD at alpha = 0.5). Positions
    default to the public code's sigma in [0.002, 24.4] on EDM's grid."""

    divergence: UniDivergence = "fkl"
    ratio: Literal["exact", "discriminator"] = "discriminator"
    logit_clamp: float = 10.0
    self_normalize: bool = False
    weighting: Literal["unbiased", "x0", "sid"] = "sid"
    guidance: float = 1.0
    t_low: float = 0.0
    t_high: float = 0.8
    t_grid: int = 0
    loss_scale: float = 1.0
    wf_min: float = 1e-5


def uni_instruct_per_sample(x: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor, snr: torch.Tensor,
                            ratio: torch.Tensor, divergence: FDivergence) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss [B], its DI-like part [B]) per unit log-SNR: Form B in x0 form (§2.3) at per-sample SNR and ratio."""
    delta, e0 = y_real - y_fake, y_fake - x
    d2, de = sample_sum(delta.square()), sample_sum(delta * e0)
    with torch.no_grad():
        r = ratio.to(x)
        h, dh, d2h = divergence.h(r), divergence.dh(r), divergence.d2h(r)
        di_weight = snr**2 / 2 * (-(r**2) * d2h * d2 + 2 * r * dh * de)
        di_direction = per_sample(di_weight, delta) * delta
    sim_fisher = snr / 2 * ((h - r * dh) * d2 + 2 * h * de)
    di = sample_sum(di_direction * x)
    return sim_fisher + di, di


class UniInstruct(Objective):
    """The Form-B surrogate; the fake score trains by denoising score matching, the ratio's discriminator (when
    it is one) by the adversary's own loss, whose generator term, if weighted, is Uni-Instruct's optional GAN."""

    def __init__(self, options: UniInstructOptions) -> None:
        super().__init__(options)
        self.needs_adversary = options.ratio == "discriminator"
        self.divergence = F_DIVERGENCES[options.divergence]

    def times(self, n: int, schedule) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(t [n], the unbiased weight |dlambda / dposition| (t_high - t_low) [n], or None for the others)."""
        o = self.options
        if o.weighting != "unbiased":
            return draw_times(o, schedule, n, self.progress), None
        position = parallel.draw_local(
            lambda m: o.t_low + (o.t_high - o.t_low) * torch.rand(m, dtype=torch.float64), n)
        return schedule.t_at(position).float(), log_snr_slope(schedule, position).abs() * (o.t_high - o.t_low)

    def ratio(self, x_t: torch.Tensor, t: torch.Tensor, cond, teacher: Denoiser, fake: Denoiser,
              adversary) -> torch.Tensor:
        """r = p_t(x_t) / q_t(x_t) per sample, without gradient."""
        o = self.options
        with torch.no_grad():
            if o.ratio == "exact":
                log_ratio = teacher.log_density(x_t, t, cond) - fake.log_density(x_t, t, cond)
            else:
                log_ratio = adversary.logits_at(x_t, t, cond).double().clamp(-o.logit_clamp, o.logit_clamp)
            r = log_ratio.double().exp()
            return r / r.mean() if o.self_normalize else r

    def generator_loss(self, x, cond, teacher: Denoiser, fake: Denoiser | None, adversary=None):
        o = self.options
        schedule = teacher.schedule
        t, unbiased = self.times(x.shape[0], schedule)
        t = t.to(x)
        eps = self.draw_noise(x)
        x_t = schedule.add_noise(x, eps, t)
        y_real = teacher.x0(x_t, t, cond, o.guidance)
        y_fake = fake.x0(x_t, t, cond)
        snr = (schedule.alpha(t) / schedule.sigma(t)).square().to(x)
        r = self.ratio(x_t.detach(), t, cond, teacher, fake, adversary)
        per, di = uni_instruct_per_sample(x, y_real, y_fake, snr, r, self.divergence)
        if o.weighting == "unbiased":
            weight = unbiased.to(x)
        elif o.weighting == "x0":
            weight = 2 / snr
        else:
            weight = 2 / (snr * weight_factor(x, y_real, o.wf_min).to(x))
        loss = o.loss_scale * (weight * per).mean()
        return loss, {"uni_instruct": loss.item(), "ui_di": (o.loss_scale * weight * di).mean().item(),
                      "ui_ratio_mean": r.mean().item(), "ui_ratio_max": r.max().item()}


def build_uni_instruct(options: UniInstructOptions, context) -> UniInstruct:
    """Check what the chosen ratio and weighting need before the run starts."""
    o = options
    if o.weighting == "unbiased" and (o.t_sampling != "uniform" or o.t_grid):
        raise ConfigError("objective.weighting: 'unbiased' divides by the density times were drawn with, known "
                          "here for continuous uniform positions: set t_sampling: uniform and t_grid: 0")
    schedule = context.teacher.schedule
    low = schedule.t_at(torch.tensor(o.t_low, dtype=torch.float64))
    if float(schedule.sigma(low)) <= 0 or float(schedule.alpha(schedule.t_at(torch.tensor(o.t_high)))) <= 0:
        raise ConfigError(f"objective.t_low, objective.t_high: Uni-Instruct weighs by the signal-to-noise ratio, "
                          f"infinite or zero at the schedule's ends; positions [{o.t_low}, {o.t_high}] reach them, "
                          "so move them inside (0, 1)")
    if o.ratio == "exact":
        missing = [key for key, network in (("teacher", context.teacher), ("fake_score", context.fake_score))
                   if not callable(getattr(network, "log_density", None))]
        if missing:
            raise ConfigError(f"objective.ratio: 'exact' reads exact noisy log densities, which {', '.join(missing)} "
                              "cannot give (the gmm teacher and fake_score.kind: exact_gaussian can); use "
                              "'discriminator' with an adversary")
    return UniInstruct(o)


OBJECTIVES.register("uni_instruct", UniInstructOptions)(build_uni_instruct)
