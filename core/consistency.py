"""Consistency students (Song et al. 2023; consistency.md §2.1): f(x, sigma) = c_skip(sigma) x + c_out(sigma) F with
c_skip = sigma_d^2 / ((sigma - sigma_min)^2 + sigma_d^2) and c_out = sigma_d (sigma - sigma_min) / sqrt(sigma_d^2 +
sigma^2), in EDM coordinates (x = x_t / alpha, sigma = the schedule's sigma / alpha), so f(x, sigma_min) = x for any
network. F is read from the student Denoiser, a copy of the teacher: its x0 is c_skip^EDM x + c_out^EDM F, so
f = ((sigma - sigma_min) / sigma) D + (c_skip - ((sigma - sigma_min) / sigma) c_skip^EDM) x, which is the
consistency parameterisation exactly for an EDM-preconditioned network and keeps the boundary for any other.
Sampling (§2.5): f at the first time from pure noise, then re-noised with fresh noise to each further time,
x = f + sqrt(sigma_k^2 - sigma_min^2) n, and mapped again."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from potstill.core import parallel
from potstill.core.config import SECTION_REGISTRIES, Component
from potstill.core.denoiser import Denoiser
from potstill.core.generator import Generator
from potstill.core.init_from import load_init_weights
from potstill.core.logvar_heads import LogvarInput, build_logvar_head
from potstill.core.registry import FAKE_SCORES, GENERATORS
from potstill.core.schedules import Schedule
from potstill.core.tensors import per_sample

SIGMA_MAX = 80.0


def karras_grid(sigma_max: float, sigma_min: float, points: int, rho: float = 7.0) -> torch.Tensor:
    """`points` decreasing EDM sigmas from sigma_max to sigma_min (Karras et al. 2022, eq. 5), float64."""
    ramp = torch.linspace(0, 1, points, dtype=torch.float64)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def edm_point(schedule: Schedule, x_e: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, t): the schedule's noisy input and time for EDM coordinates x_e at EDM sigmas [B] (x_t = alpha x_e)."""
    t = schedule.t_at_edm_sigma(sigma).to(x_e.dtype)
    return per_sample(schedule.alpha(t), x_e) * x_e, t


def sigma_range(schedule: Schedule, sigma_min: float | None, sigma_max: float | None) -> tuple[float, float]:
    """(sigma_min, sigma_max) in EDM units: as given, else the schedule's smallest EDM sigma and its largest, at
    most 80 (EDM's; a flow schedule's reaches infinity at t = 1)."""
    ends = schedule.edm_sigma(schedule.t_at(torch.tensor([0.0, 1.0], dtype=torch.float64))).double()
    low = float(ends[0]) if sigma_min is None else sigma_min
    high = min(float(ends[1]), SIGMA_MAX) if sigma_max is None else sigma_max
    if not 0 < low < high:
        raise ValueError(f"generator.sigma_min, generator.sigma_max: need 0 < sigma_min < sigma_max, got {low}, {high}")
    return low, high


def consistency_output(denoiser: Denoiser, x_e: torch.Tensor, sigma: torch.Tensor, cond, sigma_min: float,
                       guidance: float = 1.0) -> torch.Tensor:
    """f(x_e, sigma) for EDM-coordinate inputs x_e [B, ...] at EDM sigmas [B]."""
    d = denoiser.x0(*edm_point(denoiser.schedule, x_e, sigma), cond, guidance)
    sd, s = denoiser.sigma_data, sigma.to(x_e.dtype)
    shrink = per_sample((s - sigma_min) / s, x_e)
    c_skip = per_sample(sd**2 / ((s - sigma_min) ** 2 + sd**2), x_e)
    c_skip_edm = per_sample(sd**2 / (s**2 + sd**2), x_e)
    return shrink * d + (c_skip - shrink * c_skip_edm) * x_e


class ConsistencyGenerator(Generator):
    """The consistency student: `consistency(x_e, sigma, cond)` is f, which the consistency objectives train on
    real samples noised to drawn levels in [sigma_min, sigma_max] (so `forward` takes real samples:
    `trains_on_real`); `sample` maps noise at `sigmas[0]` and re-noises to each further level. With
    `parameterisation: trigflow` (sCM) f is the network's own x0 at the matching point, cos t x_t - sin t sigma_d F
    in TrigFlow terms, and the boundary is at sigma = 0; `logvar` is sCM's adaptive weighting head (or None)."""

    trains_on_real = True

    def __init__(self, denoiser: Denoiser, sigmas: list[float], sigma_min: float, sigma_max: float,
                 guidance: float = 1.0, parameterisation: str = "karras", logvar: nn.Module | None = None) -> None:
        super().__init__()
        if not sigmas or any(a <= b for a, b in itertools.pairwise(sigmas)) or sigmas[-1] <= sigma_min:
            raise ValueError(f"generator.sigmas: must decrease and stay above sigma_min {sigma_min}, got {sigmas}")
        self.denoiser, self.guidance, self.parameterisation = denoiser, guidance, parameterisation
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.logvar = logvar
        self.register_buffer("sigmas", torch.tensor(sigmas, dtype=torch.float64), persistent=False)

    @property
    def nfe(self) -> int:
        return len(self.sigmas)

    def use_steps(self, steps: int) -> None:
        """Sample in `steps` steps at Karras-grid levels from sigmas[0] down (`potstill sample --steps`): the
        levels of a `steps + 1`-point grid to sigma_min, less the last."""
        self.sigmas = karras_grid(float(self.sigmas[0]), self.sigma_min, steps + 1)[:-1].to(self.sigmas.device)

    def consistency(self, x_e: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        if self.parameterisation == "trigflow":
            return self.denoiser.x0(*edm_point(self.denoiser.schedule, x_e, sigma), cond, self.guidance)
        return consistency_output(self.denoiser, x_e, sigma, cond, self.sigma_min, self.guidance)

    def forward(self, real: torch.Tensor, cond=None) -> torch.Tensor:
        """f at real samples noised to the first level (the student's one-step map, seen from data)."""
        sigma = self.sigmas[:1].expand(real.shape[0])
        return self.consistency(real + per_sample(sigma, real).to(real) * parallel.randn_like(real), sigma, cond)

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, cond=None) -> torch.Tensor:
        n = noise.shape[0]
        x = self.consistency(float(self.sigmas[0]) * noise, self.sigmas[:1].expand(n), cond)
        floor = 0.0 if self.parameterisation == "trigflow" else self.sigma_min
        for sigma in self.sigmas[1:]:
            spread = math.sqrt(float(sigma) ** 2 - floor**2)
            x = self.consistency(x + spread * parallel.randn_like(x), sigma.expand(n), cond)
        return x


@dataclass
class NoisedStudentOptions:
    """What the students trained on noised real samples share. `network`: the student's Denoiser, made as a fake
    score is (`teacher_copy`, the default; `mlp` for the vector teacher, which has no network to copy);
    `sigma_min`, `sigma_max`: the EDM noise range it covers (null: the teacher schedule's, the top at most 80);
    `guidance`: CFG on the student; `init_from`: a run directory whose EMA student these weights start from."""

    network: Component = field(default_factory=lambda: Component("teacher_copy"))
    sigma_min: float | None = None
    sigma_max: float | None = None
    guidance: float = 1.0
    init_from: str | None = None


def build_noised_student(options: NoisedStudentOptions, context,
                         make: Callable[[Denoiser, float, float], Generator]) -> Generator:
    """`make(denoiser, sigma_min, sigma_max)` on the configured network and noise range, then `init_from`."""
    network = options.network
    denoiser = FAKE_SCORES.get(network.kind, "generator.network.kind").builder(network.options, context)
    low, high = sigma_range(denoiser.schedule, options.sigma_min, options.sigma_max)
    generator = make(denoiser, low, high)
    if options.init_from:
        load_init_weights(generator, options.init_from)
    return generator


@dataclass
class ConsistencyGeneratorOptions(NoisedStudentOptions):
    """NoisedStudentOptions (`sigma_min` is the boundary), and `sigmas`: the sampling levels in EDM units
    (sigma / alpha), decreasing (null: one step from sigma_max); `parameterisation`: `karras` (CD's c_skip, c_out)
    or `trigflow` (sCM's: the network's x0); `logvar_head`: sCM's adaptive weighting head, on `logvar_input`:
    `time_features` (an MLP on sin, cos of k t) or `time_embedding` (a linear layer on the network's own time
    embedding, SANA-Sprint's and FastGen's)."""

    sigmas: list[float] | None = None
    parameterisation: Literal["karras", "trigflow"] = "karras"
    logvar_head: bool = False
    logvar_input: LogvarInput = "time_features"


SECTION_REGISTRIES[ConsistencyGeneratorOptions] = {"network": FAKE_SCORES}


@GENERATORS.register("consistency", ConsistencyGeneratorOptions)
def build_consistency_generator(options: ConsistencyGeneratorOptions, context) -> ConsistencyGenerator:
    def make(denoiser: Denoiser, low: float, high: float) -> ConsistencyGenerator:
        logvar = build_logvar_head(options.logvar_input, denoiser) if options.logvar_head else None
        return ConsistencyGenerator(denoiser, options.sigmas or [high], low, high, options.guidance,
                                    options.parameterisation, logvar)

    return build_noised_student(options, context, make)
