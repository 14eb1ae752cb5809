"""Consistency distillation (Song et al. 2023; consistency.md §2.2-2.4, as `openai/consistency_models` computes
it): a level n ~ U{0..N-2} of the N-point Karras grid per sample, x = x0 + sigma_n z from a real sample, one
teacher step from sigma_n to sigma_{n+1} (Heun, or Euler), and the distance between the student's f(x, sigma_n)
and the target network's sg f_target(x_hat, sigma_{n+1}), weighted uniformly. The target network is an EMA of the
student with its own decay (CD's mu = 0.95), updated after every generator step. In EDM coordinates (x / alpha,
sigma / alpha), so any teacher schedule works. With finite N the fixed point is not the exact consistency map:
its bias falls like N^-2 with Heun and N^-1 with Euler (§7.6)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from potstill.core import parallel
from potstill.core.config import AT_LEAST_1, RULES, ConfigError, Rule
from potstill.core.consistency import ConsistencyGenerator, edm_point, karras_grid
from potstill.core.denoiser import Denoiser
from potstill.core.distance_network import DistanceNetwork, load_distance_network
from potstill.core.objectives.base import Objective
from potstill.core.registry import OBJECTIVES
from potstill.core.tensors import per_sample, sample_mean, sample_sum


@dataclass
class CDOptions:
    """`scales`: N, the Karras grid's points (rho 7) between the student's sigma_max and sigma_min; `solver`: the
    teacher's step; `target_decay`: the target network's EMA decay mu (0: the student itself, stop-gradient);
    `distance`: `l2` (mean square), `l1` (mean absolute) or `pseudo_huber` sqrt(||d||^2 + c^2) - c with
    `huber_c` (null: iCT's 0.00054 sqrt(dim)), or `network`: a local perceptual network (the paper's LPIPS) built
    by `distance_network` ('package.module:function') with `distance_weights` (core/distance_network.py);
    `guidance`: CFG on the teacher's step."""

    scales: int = 18
    rho: float = 7.0
    solver: Literal["heun", "euler"] = "heun"
    target_decay: float = 0.95
    distance: Literal["l2", "l1", "pseudo_huber", "network"] = "l2"
    huber_c: float | None = None
    distance_network: str | None = None
    distance_weights: str | None = None
    guidance: float = 1.0


RULES[CDOptions] = {"scales": Rule(lambda v: v >= 2, "at least 2"), "rho": AT_LEAST_1,
                    "target_decay": Rule(lambda v: 0 <= v < 1, "in [0, 1)")}


def teacher_step(teacher: Denoiser, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, cond,
                 solver: str, guidance: float) -> torch.Tensor:
    """One step of the teacher's probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma in EDM coordinates,
    from sigma to sigma_next (per sample), by Euler or Heun."""
    schedule = teacher.schedule

    def slope(x_e: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return (x_e - teacher.x0(*edm_point(schedule, x_e, s), cond, guidance)) / per_sample(s, x_e).to(x_e)

    h = per_sample(sigma_next - sigma, x).to(x)
    d = slope(x, sigma)
    euler = x + d * h
    if solver == "euler":
        return euler
    return x + (d + slope(euler, sigma_next)) * h / 2


class CD(Objective):
    """CD's loss on the consistency student; no fake score."""

    uses_fake_score = False

    def __init__(self, options: CDOptions, generator: ConsistencyGenerator, target: ConsistencyGenerator,
                 distance_network: DistanceNetwork | None = None) -> None:
        """`target`: a whole copy of the student, the EMA target network."""
        super().__init__(options)
        self.target = target.requires_grad_(False).eval()
        grid = karras_grid(generator.sigma_max, generator.sigma_min, options.scales, options.rho)
        self.register_buffer("grid", grid)
        self._distance_network = [distance_network]    # a list keeps its frozen weights out of checkpoints

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-sample distance between the student's and the target's outputs."""
        o = self.options
        if o.distance == "l2":
            return sample_mean((a - b).square())
        if o.distance == "l1":
            return sample_mean((a - b).abs())
        if o.distance == "network":
            return self._distance_network[0].to(a.device)(a, b)
        c = o.huber_c if o.huber_c is not None else 0.00054 * math.sqrt(a[0].numel())
        return (sample_sum((a - b).square()) + c**2).sqrt() - c

    def generator_step(self, generator, real, cond, teacher: Denoiser, fake=None, adversary=None):
        o = self.options
        n = parallel.draw_local(lambda m: torch.randint(0, o.scales - 1, (m,)), real.shape[0]).to(real.device)
        sigma, sigma_next = self.grid[n], self.grid[n + 1]
        x = real + per_sample(sigma, real).to(real) * parallel.randn_like(real)
        with torch.no_grad():
            x_next = teacher_step(teacher, x, sigma, sigma_next, cond, o.solver, o.guidance)
            target = self.target.consistency(x_next, sigma_next, cond)
        out = generator.consistency(x, sigma, cond)
        loss = self.distance(out, target).mean()
        return loss, {"cd": loss.item()}, out

    @torch.no_grad()
    def after_generator_step(self, generator) -> None:
        """theta_target <- mu theta_target + (1 - mu) theta."""
        for kept, current in zip(self.target.parameters(), generator.parameters(), strict=True):
            kept.lerp_(current.detach(), 1 - self.options.target_decay)


def build_cd(options: CDOptions, context) -> CD:
    if not isinstance(context.generator, ConsistencyGenerator):
        raise ConfigError("generator.kind: cd trains a consistency student; set generator.kind: consistency")
    if (options.distance == "network") != (options.distance_network is not None):
        raise ConfigError("objective.distance_network: name the network ('package.module:function') exactly when "
                          "objective.distance is network")
    network = (load_distance_network(options.distance_network, options.distance_weights, "objective")
               if options.distance_network else None)
    return CD(options, context.generator, context.engine.copy_model(context.generator), network)


OBJECTIVES.register("cd", CDOptions)(build_cd)
