"""Cameras for text-to-3D: threestudio's random camera sampler (`data/uncond.py`) and fixed turntable cameras,
and the rays they cast. World frame z-up, cameras look at the origin, OpenGL convention (the camera looks
along its -z axis, +y up)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from potstill.core.config import RULES, Rule


@dataclass
class CameraOptions:
    """Ranges [low, high] the random sampler draws from: elevation and azimuth in degrees, distance from the
    origin in world units, vertical field of view in degrees (threestudio's defaults for a unit-radius scene)."""

    elevation_range: list[float] = field(default_factory=lambda: [-10.0, 90.0])
    azimuth_range: list[float] = field(default_factory=lambda: [-180.0, 180.0])
    distance_range: list[float] = field(default_factory=lambda: [1.5, 2.0])
    fovy_range: list[float] = field(default_factory=lambda: [40.0, 70.0])


def _range_within(low: float, high: float, wants: str) -> Rule:
    """A [low, high] range, not empty, inside [low, high] bounds (open where `wants` says so)."""
    return Rule(lambda v: len(v) == 2 and v[0] <= v[1] and low <= v[0] and v[1] <= high, wants)


RULES[CameraOptions] = {
    "elevation_range": _range_within(-90, 90, "[low, high] with low <= high, inside [-90, 90] degrees"),
    "azimuth_range": _range_within(-math.inf, math.inf, "[low, high] with low <= high"),
    "distance_range": _range_within(1e-9, math.inf, "[low, high] with 0 < low <= high"),
    "fovy_range": _range_within(1e-9, 180 - 1e-9, "[low, high] with low <= high, inside (0, 180) degrees"),
}


@dataclass
class Cameras:
    """A batch of B pinhole cameras: camera-to-world [B, 4, 4], vertical field of view [B] in radians, and the
    spherical position they were placed at (elevation, azimuth in radians, distance; each [B])."""

    c2w: torch.Tensor
    fovy: torch.Tensor
    elevation: torch.Tensor
    azimuth: torch.Tensor
    distance: torch.Tensor

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(*(getattr(self, name).to(device) for name in ("c2w", "fovy", "elevation", "azimuth",
                                                                     "distance")))

    def __getitem__(self, index) -> Cameras:
        return Cameras(self.c2w[index], self.fovy[index], self.elevation[index], self.azimuth[index],
                       self.distance[index])


def _uniform(n: int, low_high: list[float], generator: torch.Generator | None) -> torch.Tensor:
    low, high = low_high
    return torch.rand(n, generator=generator, dtype=torch.float64) * (high - low) + low


def look_at_origin(elevation: torch.Tensor, azimuth: torch.Tensor, distance: torch.Tensor,
                   fovy: torch.Tensor) -> Cameras:
    """Cameras at the given spherical positions (radians, z-up), looking at the origin with world z as up."""
    position = torch.stack([distance * elevation.cos() * azimuth.cos(), distance * elevation.cos() * azimuth.sin(),
                            distance * elevation.sin()], -1)
    forward = F.normalize(-position, dim=-1)
    world_up = torch.tensor([0.0, 0.0, 1.0], dtype=position.dtype).expand_as(position)
    right = torch.linalg.cross(forward, world_up)
    at_pole = right.norm(dim=-1, keepdim=True) < 1e-9      # straight above or below: any right is as good
    right = torch.where(at_pole, torch.stack([-azimuth.sin(), azimuth.cos(), torch.zeros_like(azimuth)], -1), right)
    right = F.normalize(right, dim=-1)
    up = F.normalize(torch.linalg.cross(right, forward), dim=-1)
    c2w = torch.eye(4, dtype=position.dtype).repeat(len(position), 1, 1)
    c2w[:, :3, :3] = torch.stack([right, up, -forward], -1)
    c2w[:, :3, 3] = position
    return Cameras(c2w.float(), fovy.float(), elevation.float(), azimuth.float(), distance.float())


def sample_cameras(n: int, options: CameraOptions, generator: torch.Generator | None = None) -> Cameras:
    """threestudio's random cameras: with probability 1/2 the elevation is uniform in degrees, else uniform on the
    sphere (inverse-transform sampling of sin(elevation)) over the same range; azimuths stratified across the
    batch (one per equal slice of the range, jittered); distance and field of view uniform."""
    low, high = (math.radians(v) for v in options.elevation_range)
    if torch.rand((), generator=generator) < 0.5:
        elevation = _uniform(n, [low, high], generator)
    else:
        sin_low, sin_high = math.sin(low), math.sin(high)
        elevation = torch.asin(_uniform(n, [sin_low, sin_high], generator).clamp(-1, 1))
    az_low, az_high = options.azimuth_range
    azimuth = (torch.rand(n, generator=generator, dtype=torch.float64) + torch.arange(n)) / n
    azimuth = torch.deg2rad(azimuth * (az_high - az_low) + az_low)
    distance = _uniform(n, options.distance_range, generator)
    fovy = torch.deg2rad(_uniform(n, options.fovy_range, generator))
    return look_at_origin(elevation, azimuth, distance, fovy)


def turntable_cameras(frames: int, elevation_deg: float = 15.0, distance: float = 1.75,
                      fovy_deg: float = 50.0) -> Cameras:
    """`frames` cameras evenly round the vertical axis at one elevation, distance and field of view (export)."""
    azimuth = torch.arange(frames, dtype=torch.float64) * (2 * math.pi / frames)
    full = torch.ones(frames, dtype=torch.float64)
    return look_at_origin(full * math.radians(elevation_deg), azimuth, full * distance,
                          full * math.radians(fovy_deg))


def camera_rays(cameras: Cameras, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(origins, unit directions), each [B, H, W, 3], through pixel centres: focal = H / (2 tan(fovy / 2)), row 0
    at the top of the image."""
    device = cameras.c2w.device
    focal = height / (2 * torch.tan(cameras.fovy / 2))
    cols = torch.arange(width, device=device, dtype=torch.float32) + 0.5 - width / 2
    rows = torch.arange(height, device=device, dtype=torch.float32) + 0.5 - height / 2
    y, x = torch.meshgrid(-rows, cols, indexing="ij")
    directions = torch.stack([x[None] / focal[:, None, None], y[None] / focal[:, None, None],
                              -torch.ones_like(x).expand(len(cameras), -1, -1)], -1)
    rotation, position = cameras.c2w[:, :3, :3], cameras.c2w[:, :3, 3]
    world = F.normalize(torch.einsum("bij,bhwj->bhwi", rotation, directions), dim=-1)
    return position[:, None, None, :].expand_as(world), world


def sphere_cameras(count: int, distance: float = 1.75, fovy_deg: float = 50.0) -> Cameras:
    """`count` cameras spread evenly over the whole sphere of directions (a Fibonacci lattice), looking at the
    origin: fixed views that see every side of a shape, for scoring and export."""
    index = torch.arange(count, dtype=torch.float64) + 0.5
    elevation = torch.asin(1 - 2 * index / count)
    azimuth = torch.remainder(index * math.pi * (3 - math.sqrt(5)), 2 * math.pi) - math.pi
    full = torch.ones(count, dtype=torch.float64)
    return look_at_origin(elevation, azimuth, full * distance, full * math.radians(fovy_deg))
