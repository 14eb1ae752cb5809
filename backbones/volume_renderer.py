"""Pure-PyTorch volume rendering of a 3-D field (NeRF's quadrature, Mildenhall et al. 2020, as threestudio's
NeRF renderer computes it, without nerfacc): stratified samples where each ray crosses the scene's bounding
sphere, density softplus(raw + blob bias) or its truncated exp (threestudio's `blob` prior, which starts the
field as a ball, and two of its density activations), alpha compositing over a background colour. Returns
colour, opacity, expected depth and the surface point where the accumulated opacity crosses 1/2, chunked over
rays."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from potstill.backbones.fields import Field
from potstill.core.config import AT_LEAST_1, POSITIVE, RULES, Rule

SURFACE_OPACITY = 0.5       # a ray's surface point is where its accumulated opacity crosses this
EXP_GRADIENT_CAP = 15.0     # trunc_exp's gradient is exp(min(x, this)), as torch-ngp and threestudio take it


class TruncatedExp(torch.autograd.Function):
    """exp(x) with the gradient of exp(min(x, EXP_GRADIENT_CAP)) (torch-ngp's trunc_exp): a density that Adam's
    bounded steps on the raw value can raise by orders of magnitude, without an overflowing gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=EXP_GRADIENT_CAP))


DENSITY_ACTIVATIONS = {"softplus": F.softplus, "trunc_exp": TruncatedExp.apply}


@dataclass
class RendererOptions:
    """`radius`: the bounding sphere of the scene (world units; the field's unit cube is scaled by it).
    `samples`: stratified samples per ray (jittered in training, bin centres otherwise). `blob_scale`,
    `blob_std`: the density bias blob_scale (1 - |p| / blob_std) (threestudio's volume grid: 5, 0.5); 0 switches
    it off. `density_activation`: `softplus` or `trunc_exp` (the opacity reaches 1/2 at ln 2 / density inside the
    matter, and under Adam exp lets the density rise far faster: a sharper surface, and a freer one, README).
    `background`: the colour of rays that hit nothing, in [0, 1]. `chunk`: rays per pass."""

    radius: float = 1.0
    samples: int = 64
    blob_scale: float = 5.0
    blob_std: float = 0.5
    density_activation: str = "softplus"
    background: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    chunk: int = 32768


RULES[RendererOptions] = {
    "radius": POSITIVE, "blob_std": POSITIVE, "samples": AT_LEAST_1, "chunk": AT_LEAST_1,
    "density_activation": Rule(lambda v: v in DENSITY_ACTIVATIONS, f"one of {sorted(DENSITY_ACTIVATIONS)}"),
    "background": Rule(lambda v: len(v) == 3 and all(0 <= c <= 1 for c in v), "an [r, g, b] colour in [0, 1]"),
}


@dataclass
class Render:
    """Per ray (leading shape of the rays): `rgb` [..., 3] composited over the background, `opacity` [...],
    `depth` [...] the expected distance along the ray given a hit (sum w t / opacity), `surface` [..., 3] the point
    where the opacity crosses 1/2 and `hit` [...] whether it does."""

    rgb: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor
    surface: torch.Tensor
    hit: torch.Tensor

    def parts(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]

    def detach(self) -> Render:
        return Render(*(part.detach() for part in self.parts()))


def sphere_interval(origins: torch.Tensor, directions: torch.Tensor, radius: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(near, far) distances where unit-direction rays cross the sphere |p| = radius (near >= 0; both 0 on a miss)."""
    b = (origins * directions).sum(-1)
    c = (origins * origins).sum(-1) - radius**2
    half_chord = (b * b - c).clamp_min(0).sqrt()
    missed = b * b - c <= 0
    near = (-b - half_chord).clamp_min(0)
    far = (-b + half_chord).clamp_min(0)
    return near.masked_fill(missed, 0), far.masked_fill(missed, 0)


def density(field_module: Field, points: torch.Tensor, options: RendererOptions
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(density, colour) at world points [N, 3]: the density activation of raw + blob bias, and the field's
    colour."""
    raw, colour = field_module(points / options.radius)
    bias = options.blob_scale * (1 - points.detach().norm(dim=-1) / options.blob_std)
    return DENSITY_ACTIVATIONS[options.density_activation](raw + bias), colour


def _render_rays(field_module: Field, origins: torch.Tensor, directions: torch.Tensor, options: RendererOptions,
                 jitter: bool) -> Render:
    n, k = origins.shape[0], options.samples
    near, far = sphere_interval(origins, directions, options.radius)
    step = (far - near) / k
    edges = near[:, None] + step[:, None] * torch.arange(k + 1, device=origins.device, dtype=origins.dtype)
    offset = torch.rand(n, k, device=origins.device, dtype=origins.dtype) if jitter else 0.5
    t = edges[:, :-1] + step[:, None] * offset
    points = origins[:, None, :] + t[..., None] * directions[:, None, :]
    sigma, colour = density(field_module, points.reshape(-1, 3), options)
    optical = sigma.reshape(n, k) * step[:, None]
    before = torch.cat([optical.new_zeros(n, 1), optical.cumsum(-1)], -1)       # optical depth at each edge
    weights = torch.exp(-before[:, :-1]) * -torch.expm1(-optical)
    opacity = weights.sum(-1)
    background = torch.tensor(options.background, device=origins.device, dtype=colour.dtype)
    rgb = (weights[..., None] * colour.reshape(n, k, 3)).sum(1) + (1 - opacity)[:, None] * background
    depth = (weights * t).sum(-1) / opacity.clamp_min(1e-6)
    crossing, hit = _surface_distance(before.detach(), sigma.detach().reshape(n, k), edges.detach())
    surface = origins + crossing[:, None] * directions
    return Render(rgb, opacity, depth, surface, hit)


def _surface_distance(before: torch.Tensor, sigma: torch.Tensor, edges: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the optical depth reaches ln 2 (opacity 1/2), exactly for the piecewise-constant density; whether
    it does."""
    level = math.log(1 / (1 - SURFACE_OPACITY))
    hit = before[:, -1] >= level
    bin_index = (before[:, 1:] < level).sum(-1).clamp(max=sigma.shape[1] - 1, min=0)[:, None]
    start, optical_start = edges.gather(1, bin_index), before.gather(1, bin_index)
    within = (level - optical_start) / sigma.gather(1, bin_index).clamp_min(1e-12)
    crossing = torch.minimum(start + within, edges.gather(1, bin_index + 1))[:, 0]
    return torch.where(hit, crossing, torch.zeros_like(crossing)), hit


def render(field_module: Field, origins: torch.Tensor, directions: torch.Tensor, options: RendererOptions,
           jitter: bool = False) -> Render:
    """Render rays [..., 3] (unit directions) through the field, `options.chunk` rays at a time."""
    shape = origins.shape[:-1]
    flat_o, flat_d = origins.reshape(-1, 3), directions.reshape(-1, 3)
    parts = [_render_rays(field_module, flat_o[i:i + options.chunk], flat_d[i:i + options.chunk], options, jitter)
             for i in range(0, flat_o.shape[0], options.chunk)]
    return Render(*(torch.cat(chunks).reshape(*shape, *chunks[0].shape[1:])
                    for chunks in zip(*(p.parts() for p in parts), strict=True)))
