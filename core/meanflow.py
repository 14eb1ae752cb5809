"""MeanFlow students (Geng et al. 2025; consistency.md §5). On the rectified-flow path z_t = (1 - t) x + t eps (t = 1
is noise, v = eps - x) the average velocity u(z_t, r, t) = (1 / (t - r)) int_r^t v(z_s, s) ds gives the flow map
z_r = z_t - (t - r) u, so one step z_0 = z_1 - u(z_1, 0, 1) samples. Any Denoiser is read on this path by matching
signal-to-noise ratios: its EDM point is x_e = z / (1 - t) at sigma = t / (1 - t), and v = (z - D) / t from its x0
D. The student is a Denoiser (a copy of the teacher) whose backbone also embeds the interval t - r, through a
zero-initialised embedder added to its time embedding: it starts as the teacher's own velocity, u(z, r, t) =
v(z, t), which is MeanFlow's boundary at r = t."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from potstill.backbones.embeddings import TimestepEmbedder, time_embedding_width
from potstill.core import parallel
from potstill.core.config import SECTION_REGISTRIES
from potstill.core.consistency import NoisedStudentOptions, build_noised_student, edm_point
from potstill.core.denoiser import Denoiser
from potstill.core.generator import Generator
from potstill.core.registry import FAKE_SCORES, GENERATORS
from potstill.core.tensors import per_sample


def flow_time(edm_sigma: float | torch.Tensor) -> float | torch.Tensor:
    """The rectified-flow time t = sigma / (1 + sigma) of an EDM noise level."""
    return edm_sigma / (1 + edm_sigma)


def flow_velocity(denoiser: Denoiser, z: torch.Tensor, t: torch.Tensor, cond, guidance: float = 1.0,
                  **backbone_kwargs) -> torch.Tensor:
    """v(z, t) = (z - D) / t of any Denoiser on the rectified-flow path, D its x0 (CFG inside) at the EDM point
    with the same signal-to-noise ratio."""
    one_minus = per_sample(1 - t, z).to(z)
    d = denoiser.x0(*edm_point(denoiser.schedule, z / one_minus, t.double() / (1 - t.double())), cond, guidance,
                    **backbone_kwargs)
    return (z - d) / per_sample(t, z).to(z)


class IntervalEmbedder(TimestepEmbedder):
    """The embedding of the interval t - r, added to the backbone's time embedding; its last layer starts at zero,
    so a student copied from the teacher starts as the teacher."""

    def __init__(self, hidden: int) -> None:
        super().__init__(hidden)
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)


def interval_width(denoiser: Denoiser) -> int:
    """The width of the backbone's time embedding, which the interval embedding joins (`time_extra`: DiT, MLP)."""
    backbone = denoiser.backbone
    if not getattr(backbone, "takes_time_extra", False):
        raise ValueError(f"generator.network: the meanflow student embeds a second time, which "
                         f"{type(backbone).__name__} has no input for; use a dit or mlp network")
    return time_embedding_width(backbone, "generator.network")


class MeanFlowGenerator(Generator):
    """u(z, r, t) from the student Denoiser; trains on real samples (`trains_on_real`), which the objective noises;
    `sample` starts from noise at `times[0]` and takes the flow map through each further time to 0."""

    trains_on_real = True

    def __init__(self, denoiser: Denoiser, times: list[float], t_min: float, t_max: float,
                 guidance: float = 1.0) -> None:
        super().__init__()
        if not times or any(a <= b for a, b in itertools.pairwise(times)) or times[0] > t_max or times[-1] <= 0:
            raise ValueError(f"generator.times: must decrease within (0, {t_max:.6g}] (rectified-flow times), got "
                             f"{times}")
        self.denoiser, self.guidance = denoiser, guidance
        self.t_min, self.t_max = t_min, t_max
        self.interval = IntervalEmbedder(interval_width(denoiser))
        self.register_buffer("times", torch.tensor(times, dtype=torch.float64), persistent=False)

    @property
    def nfe(self) -> int:
        return len(self.times)

    def use_steps(self, steps: int) -> None:
        """Sample in `steps` flow-map steps at evenly spaced times from times[0] (`potstill sample --steps`)."""
        self.times = torch.linspace(float(self.times[0]), 0, steps + 1, dtype=torch.float64)[:-1].to(self.times.device)

    def average_velocity(self, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        """u(z, r, t) for [B] times r <= t (CFG on the student with its guidance)."""
        return flow_velocity(self.denoiser, z, t, cond, self.guidance, time_extra=self.interval(t - r))

    def forward(self, real: torch.Tensor, cond=None) -> torch.Tensor:
        """One flow-map step from real samples noised to times[0] (the student's one-step map, seen from data)."""
        t = self.times[:1].expand(real.shape[0]).to(real.dtype)
        z = per_sample(1 - t, real) * real + per_sample(t, real) * parallel.randn_like(real)
        return z - per_sample(t, real) * self.average_velocity(z, torch.zeros_like(t), t, cond)

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, cond=None) -> torch.Tensor:
        z = float(self.times[0]) * noise
        ends = torch.cat([self.times, self.times.new_zeros(1)])
        for t, r in itertools.pairwise(ends.tolist()):
            t_b, r_b = noise.new_full((noise.shape[0],), t), noise.new_full((noise.shape[0],), r)
            z = z - (t - r) * self.average_velocity(z, r_b, t_b, cond)
        return z


@dataclass
class MeanFlowGeneratorOptions(NoisedStudentOptions):
    """NoisedStudentOptions (the noise range as t = sigma / (1 + sigma): the top at most 80, t = 0.988), and
    `times`: rectified-flow sampling times, decreasing (null: one step from the top)."""

    times: list[float] | None = None


SECTION_REGISTRIES[MeanFlowGeneratorOptions] = {"network": FAKE_SCORES}


@GENERATORS.register("meanflow", MeanFlowGeneratorOptions)
def build_meanflow_generator(options: MeanFlowGeneratorOptions, context) -> MeanFlowGenerator:
    def make(denoiser: Denoiser, low: float, high: float) -> MeanFlowGenerator:
        return MeanFlowGenerator(denoiser, options.times or [flow_time(high)], flow_time(low), flow_time(high),
                                 options.guidance)

    return build_noised_student(options, context, make)
