"""3-D fields a text-to-3D generator optimises: points in the unit cube [-1, 1]^3 (the scene scaled by the
renderer's radius) -> raw density [N] (before the renderer's bias and density activation) and colour [N, 3] in [0, 1].
`voxel_grid` is threestudio's `volume_grid` (trilinear lookup in a dense grid), `mlp_field` a Fourier-feature
MLP (Tancik et al. 2020)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from potstill.core.config import AT_LEAST_1, POSITIVE, RULES, Rule
from potstill.core.registry import FIELDS


class Field(nn.Module):
    """Unit-cube points [N, 3] -> (raw density [N], colour [N, 3] in [0, 1])."""

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


@dataclass
class VoxelGridOptions:
    """A `resolution`^3 grid of 4 channels (raw density, 3 colour logits), zero at the start: grey, and only the
    renderer's density bias shapes the first views. `density_scale` multiplies the raw density as it is read, so
    that under Adam, whose steps are about the rate whatever the gradient's size, the density moves that many
    times faster than the colour (softplus: the half-opacity surface, ln 2 / density inside the matter, comes out)."""

    resolution: int = 48
    density_scale: float = 1.0


class VoxelGrid(Field):
    def __init__(self, options: VoxelGridOptions) -> None:
        super().__init__()
        r = options.resolution
        self.density_scale = options.density_scale
        self.grid = nn.Parameter(torch.zeros(1, 4, r, r, r))

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Trilinear lookup (`F.grid_sample` reads (x, y, z) against the grid's (W, H, D) axes); zero outside."""
        where = rearrange(points, "n xyz -> 1 n 1 1 xyz").to(self.grid.dtype)
        values = F.grid_sample(self.grid, where, mode="bilinear", align_corners=True)
        values = rearrange(values, "1 c n 1 1 -> n c")
        return values[:, 0] * self.density_scale, torch.sigmoid(values[:, 1:])


@dataclass
class MLPFieldOptions:
    """Fourier features of `frequencies` octaves (pi 2^k p, k < frequencies) then a ReLU MLP `depth` x `width`."""

    frequencies: int = 6
    width: int = 64
    depth: int = 3


class MLPField(Field):
    def __init__(self, options: MLPFieldOptions) -> None:
        super().__init__()
        self.register_buffer("scales", math.pi * 2.0 ** torch.arange(options.frequencies), persistent=False)
        layers: list[nn.Module] = []
        width_in = 3 + 6 * options.frequencies
        for _ in range(options.depth):
            layers += [nn.Linear(width_in, options.width), nn.ReLU()]
            width_in = options.width
        layers.append(nn.Linear(width_in, 4))
        self.mlp = nn.Sequential(*layers)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = rearrange(points[..., None] * self.scales, "n xyz k -> n (xyz k)")
        values = self.mlp(torch.cat([points, angles.sin(), angles.cos()], -1))
        return values[:, 0], torch.sigmoid(values[:, 1:])


RULES[VoxelGridOptions] = {"resolution": Rule(lambda v: v >= 2, "at least 2"), "density_scale": POSITIVE}
RULES[MLPFieldOptions] = dict.fromkeys(["frequencies", "width", "depth"], AT_LEAST_1)
FIELDS.register("voxel_grid", VoxelGridOptions)(lambda options, sample_shape: VoxelGrid(options))
FIELDS.register("mlp_field", MLPFieldOptions)(lambda options, sample_shape: MLPField(options))
