"""The `vector` modality: d-dimensional points with an exact Gaussian-mixture teacher, Gaussian and
MLP generators, an exact or learned fake score, and sliced-W2 / mode-recall metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.utils import save_image

from potstill.backbones.mlp import MLPBackbone, MLPOptions
from potstill.core.denoiser import Denoiser, Prediction
from potstill.core.generator import Generator, particle_index
from potstill.core.modality import Modality
from potstill.core.real_data import RealData
from potstill.core.registry import DATASETS, FAKE_SCORES, GENERATORS, MODALITIES, TEACHERS
from potstill.core.schedules import build_schedule
from potstill.modalities.gaussian_mixture import (
    GaussianMixture,
    GaussianMixtureDenoiser,
    GaussianPosteriorDenoiser,
)


@dataclass
class GMMTeacherOptions:
    """A Gaussian mixture: one mean per mode, one std per mode (a number, or one per dimension)."""

    means: list[list[float]] = field(default_factory=lambda: [[0.0, 0.0]])
    stds: list[float | list[float]] = field(default_factory=lambda: [1.0])
    weights: list[float] | None = None
    schedule: str = "edm"
    schedule_options: dict[str, Any] = field(default_factory=dict)


def build_mixture(o: GMMTeacherOptions) -> GaussianMixture:
    """Validate the mixture's keys against each other and build it."""
    if not o.means:
        raise ValueError("teacher.means: needs at least one mode")
    dim = len(o.means[0])
    if dim == 0 or any(len(m) != dim for m in o.means):
        raise ValueError(f"teacher.means: every mean needs the same, non-zero dimension; got {o.means}")
    if len(o.stds) != len(o.means):
        raise ValueError(f"teacher.stds: {len(o.stds)} stds for {len(o.means)} means; give one per mode")
    stds = []
    for i, s in enumerate(o.stds):
        row = [float(s)] * dim if isinstance(s, float | int) else [float(v) for v in s]
        if len(row) != dim or min(row) <= 0:
            raise ValueError(f"teacher.stds[{i}]: must be a positive number or {dim} positive numbers, got {s}")
        stds.append(row)
    weights = o.weights if o.weights is not None else [1.0] * len(o.means)
    if len(weights) != len(o.means) or min(weights) <= 0:
        raise ValueError(f"teacher.weights: need {len(o.means)} positive weights, got {weights}")
    return GaussianMixture(torch.tensor(o.means), torch.tensor(stds), torch.tensor(weights, dtype=torch.float64))


@TEACHERS.register("gmm", GMMTeacherOptions)
def build_gmm_teacher(options: GMMTeacherOptions, context) -> GaussianMixtureDenoiser:
    schedule = build_schedule(options.schedule, options.schedule_options, "teacher.schedule")
    return GaussianMixtureDenoiser(build_mixture(options), schedule)


def sliced_w2(a: torch.Tensor, b: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance between two equal-size point sets, over random unit directions."""
    n = min(len(a), len(b))
    directions = torch.randn(a.shape[1], projections, generator=torch.Generator().manual_seed(seed),
                             dtype=torch.float64)
    directions /= directions.norm(dim=0, keepdim=True)
    pa = (a[:n].double() @ directions).sort(dim=0).values
    pb = (b[:n].double() @ directions).sort(dim=0).values
    return float(((pa - pb) ** 2).mean().sqrt())


def mode_counts(mixture: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """How many samples fall near each mode: assigned to their most likely mode and within
    d + 5 sqrt(2 d) in squared standardised distance (chi-square mean plus five std)."""
    x = x.double()
    r = mixture.responsibilities(x, torch.ones(len(x), dtype=torch.float64), torch.zeros(len(x), dtype=torch.float64))
    k = r.argmax(dim=1)
    z2 = (((x - mixture.means[k]) / mixture.stds[k]) ** 2).sum(dim=1)
    d = mixture.dim
    near = z2 <= d + 5 * math.sqrt(2 * d)
    return torch.bincount(k[near], minlength=len(mixture.weights))


@dataclass
class VectorOptions:
    recall_fraction: float = 0.1
    swd_projections: int = 256


class VectorModality(Modality):
    """Points in R^d scored against exact draws from the teacher's mixture."""

    def __init__(self, options: VectorOptions, teacher: GaussianMixtureDenoiser) -> None:
        if not isinstance(teacher, GaussianMixtureDenoiser):
            raise ValueError("modality.kind: 'vector' needs the 'gmm' teacher")
        self.options = options
        self.mixture = teacher.mixture
        self.sample_shape = (self.mixture.dim,)

    def draw_inputs(self, n, generator=None):
        return torch.randn(n, *self.sample_shape, generator=generator), None

    @property
    def sample_formats(self) -> tuple[str, ...]:
        return (".png",) if self.mixture.dim == 2 else (".pt",)

    def save_samples(self, samples, cond, path: Path) -> Path:
        """A 2-D mixture's samples as a density image (.png), any other as the tensor (.pt)."""
        path = path.with_suffix(path.suffix or self.sample_formats[0])
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".pt":
            torch.save(samples, path)
            return path
        margin = 4 * self.mixture.stds.max()
        lo, hi = self.mixture.means.min() - margin, self.mixture.means.max() + margin
        image = torch.histogramdd(samples.double(), bins=[128, 128], range=[float(lo), float(hi)] * 2).hist
        save_image((image / image.max().clamp(min=1)).sqrt().T.flip(0)[None].float(), path)
        return path

    def evaluate(self, samples, cond) -> dict[str, float]:
        n = len(samples)
        reference = self.mixture.sample(n, torch.Generator().manual_seed(1))
        second = self.mixture.sample(n, torch.Generator().manual_seed(2))
        counts = mode_counts(self.mixture, samples)
        expected = self.mixture.weights * n
        recalled = counts >= self.options.recall_fraction * expected
        return {
            "swd": sliced_w2(samples, reference, self.options.swd_projections),
            "swd_floor": sliced_w2(second, reference, self.options.swd_projections),
            "mode_recall": float(recalled.double().mean()),
            "modes_recalled": int(recalled.sum()),
            "min_mode_share": float((counts / expected).min()),
        }


MODALITIES.register("vector", VectorOptions)(lambda options, context: VectorModality(options, context.teacher))


class GaussianGenerator(Generator):
    """x = mu + L z with L lower triangular (positive diagonal through softplus)."""

    def __init__(self, dim: int, init_std: float = 1.0, init_mean: list[float] | None = None) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.tensor(init_mean, dtype=torch.float32) if init_mean else torch.zeros(dim))
        self.raw_diag = nn.Parameter(torch.full((dim,), math.log(math.expm1(init_std))))
        self.offdiag = nn.Parameter(torch.zeros(dim, dim))

    def scale_tril(self) -> torch.Tensor:
        return torch.diag(nn.functional.softplus(self.raw_diag)) + torch.tril(self.offdiag, diagonal=-1)

    def covariance(self) -> torch.Tensor:
        scale = self.scale_tril()
        return scale @ scale.T

    def forward(self, noise, cond=None):
        return self.mean + noise @ self.scale_tril().T


@dataclass
class GaussianGeneratorOptions:
    init_std: float = 1.0
    init_mean: list[float] | None = None


@GENERATORS.register("gaussian", GaussianGeneratorOptions)
def build_gaussian_generator(options: GaussianGeneratorOptions, context) -> GaussianGenerator:
    return GaussianGenerator(context.modality.sample_shape[0], options.init_std, options.init_mean)


class MLPGenerator(Generator):
    """A one-step MLP from noise to points."""

    def __init__(self, dim: int, hidden: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(dim, hidden)]
        for _ in range(depth - 1):
            layers += [nn.SiLU(), nn.Linear(hidden, hidden)]
        layers += [nn.SiLU(), nn.Linear(hidden, dim)]
        self.net = nn.Sequential(*layers)

    def forward(self, noise, cond=None):
        return self.net(noise)


@dataclass
class MLPGeneratorOptions:
    hidden: int = 256
    depth: int = 3


@GENERATORS.register("mlp", MLPGeneratorOptions)
def build_mlp_generator(options: MLPGeneratorOptions, context) -> MLPGenerator:
    return MLPGenerator(context.modality.sample_shape[0], options.hidden, options.depth)


class ParticleGenerator(Generator):
    """A fixed set of learnable points, each its own sample, as each scene is its own parameters in
    text-to-3D SDS. The noise picks the particle: the normal CDF of its first coordinate, scaled to the
    count, so every particle is equally likely and the same noise gives the same particle."""

    def __init__(self, dim: int, count: int, init_std: float) -> None:
        super().__init__()
        self.points = nn.Parameter(torch.randn(count, dim) * init_std)

    def forward(self, noise, cond=None):
        return self.points[particle_index(noise, len(self.points))]


@dataclass
class ParticleGeneratorOptions:
    count: int = 2048
    init_std: float = 2.0


@GENERATORS.register("particles", ParticleGeneratorOptions)
def build_particle_generator(options: ParticleGeneratorOptions, context) -> ParticleGenerator:
    return ParticleGenerator(context.modality.sample_shape[0], options.count, options.init_std)


@FAKE_SCORES.register("exact_gaussian")
def build_exact_gaussian_fake(options, context) -> GaussianPosteriorDenoiser:
    if not isinstance(context.generator, GaussianGenerator):
        raise ValueError("fake_score.kind: 'exact_gaussian' needs generator.kind 'gaussian'")
    return GaussianPosteriorDenoiser(context.generator, context.teacher.schedule)


@dataclass
class MLPFakeScoreOptions:
    hidden: int = 256
    depth: int = 3
    prediction: Prediction = "edm"
    sigma_data: float | None = None


@FAKE_SCORES.register("mlp", MLPFakeScoreOptions)
def build_mlp_fake(options: MLPFakeScoreOptions, context) -> Denoiser:
    teacher = context.teacher
    dim = context.modality.sample_shape[0]
    backbone = MLPBackbone(MLPOptions(dim=dim, hidden=options.hidden, depth=options.depth))
    sigma_data = options.sigma_data if options.sigma_data is not None else teacher.sigma_data
    return Denoiser(backbone, teacher.schedule, options.prediction, sigma_data, (dim,))


class MixtureSampleStream(RealData):
    """Real data for the vector modality: exact draws from the teacher's mixture, resumable."""

    def __init__(self, mixture: GaussianMixture, seed: int) -> None:
        self.mixture = mixture
        self.generator = torch.Generator().manual_seed(seed)

    def next(self, n: int) -> tuple[torch.Tensor, None]:
        return self.mixture.sample(n, self.generator), None

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


@DATASETS.register("mixture")
def build_mixture_stream(options, context) -> MixtureSampleStream:
    if not isinstance(context.teacher, GaussianMixtureDenoiser):
        raise ValueError("real_data.kind: 'mixture' draws from the 'gmm' teacher; this run has another teacher")
    return MixtureSampleStream(context.teacher.mixture, context.config.train.seed + 1)
