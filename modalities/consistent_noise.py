"""Multi-view consistent noise (Consistent Flow Distillation, Yan et al. 2025, its triplane noise generator) without
nvdiffrast: fixed Gaussian texels on the six axis-aligned planes (three axes, two facings), each with depth layers
along its axis. A noise pixel is two triangles between the surface points at its corners; each triangle is
rasterised onto the three planes (the facing picked by its projected orientation, the layer by its depth there),
and the pixel's noise is the sum of the texels its triangles cover over the square root of their count: N(0, 1),
independent of the view's other pixels (they cover other texels), identical for one camera and one surface,
correlated between views of the same surface. Background pixels take a fixed background noise; `sqrt_beta` mixes
in fresh noise as the anchor does: sqrt_beta consistent + sqrt(1 - sqrt_beta^2) fresh."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from potstill.core.config import AT_LEAST_1, RULES, ConfigError, Rule

PLANE_AXES = ((1, 2), (2, 0), (0, 1))     # the (u, v) coordinates of the plane normal to x, y, z
CANDIDATE_BUDGET = 1 << 22                # texel candidates tested at once by the rasteriser


@dataclass
class ConsistentNoiseOptions:
    """`resolution`: texels across each plane (spanning the renderer's bounding cube); `layers`: depth layers per
    plane; `sqrt_beta`: weight of the consistent noise (1: fully consistent, the anchor's default for CFD);
    `opacity_threshold`: a corner counts as surface above this opacity; `refresh`: gamma of the SDE refresh,
    texels <- sqrt(1 - gamma) texels + sqrt(gamma) fresh at every step (0: fixed, CFD's ODE form)."""

    resolution: int = 128
    layers: int = 8
    sqrt_beta: float = 1.0
    opacity_threshold: float = 0.5
    refresh: float = 0.0


RULES[ConsistentNoiseOptions] = {
    "resolution": AT_LEAST_1, "layers": AT_LEAST_1,
    **dict.fromkeys(["sqrt_beta", "opacity_threshold", "refresh"], Rule(lambda v: 0 <= v <= 1, "in [0, 1]")),
}


def corner_points(surface: torch.Tensor, opacity: torch.Tensor, stride: int, threshold: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Surface points [B, h+1, w+1, 3] at the corners of the noise pixels (each `stride` render pixels wide): the
    mean of the surface points of the render pixels round each corner that count as surface, and whether any do."""
    mask = (opacity > threshold).float()[:, None]
    points = rearrange(surface, "b h w c -> b c h w") * mask
    pooled_points = F.avg_pool2d(points, 2 * stride, stride, padding=stride)
    pooled_mask = F.avg_pool2d(mask, 2 * stride, stride, padding=stride)
    corners = pooled_points / pooled_mask.clamp_min(1e-12)
    concrete = pooled_mask[:, 0] > 0
    return rearrange(corners, "b c h w -> b h w c"), concrete


def pixel_triangles(corners: torch.Tensor, concrete: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two triangles per noise pixel (vertices [T, 3, 3]) whose corners are all surface, and the flat index of the
    (view, pixel) each belongs to [T]."""
    b, hp, wp, _ = corners.shape
    h, w = hp - 1, wp - 1
    top_left, top_right = corners[:, :-1, :-1], corners[:, :-1, 1:]
    bottom_left, bottom_right = corners[:, 1:, :-1], corners[:, 1:, 1:]
    ok_tl, ok_tr, ok_bl, ok_br = concrete[:, :-1, :-1], concrete[:, :-1, 1:], concrete[:, 1:, :-1], concrete[:, 1:, 1:]
    first = torch.stack([top_left, top_right, bottom_left], -2)
    second = torch.stack([top_right, bottom_right, bottom_left], -2)          # the same winding as `first`
    triangles = torch.stack([first, second], 3)                        # [B, h, w, 2, 3, 3]
    valid = torch.stack([ok_tl & ok_tr & ok_bl, ok_tr & ok_bl & ok_br], -1)
    owner = torch.arange(b * h * w, device=corners.device).reshape(b, h, w, 1).expand(b, h, w, 2)
    return triangles[valid], owner[valid]


def covered_texels(triangles: torch.Tensor, owner: torch.Tensor, axis: int, radius: float, resolution: int,
               layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(texel index, owner) for every texel centre a triangle covers on the planes normal to `axis`: the texel
    index counts (facing, layer, u, v) within that axis's two planes."""
    u_axis, v_axis = PLANE_AXES[axis]
    to_texel = resolution / (2 * radius)
    uv = (triangles[..., [u_axis, v_axis]] + radius) * to_texel               # [T, 3, 2] in texel units
    depth = triangles[..., axis]
    edge1, edge2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    area = edge1[:, 0] * edge2[:, 1] - edge1[:, 1] * edge2[:, 0]
    keep = area.abs() > 1e-12
    uv, depth, area, owner = uv[keep], depth[keep], area[keep], owner[keep]
    low = torch.ceil(uv.amin(1) - 0.5).clamp(0, resolution - 1).long()
    high = torch.floor(uv.amax(1) - 0.5).clamp(-1, resolution - 1).long()
    extent = (high - low + 1).clamp_min(0)
    widest = extent.amax(-1).clamp_min(1)
    order = torch.argsort(widest, descending=True)
    widest = widest[order]
    texels, owners = [], []
    start = 0
    while start < len(order):
        size = int(widest[start])             # the largest left sets the window; those over half as wide share it
        sharing = int((widest[start:] > size // 2).sum())
        pick = order[start:start + max(min(sharing, CANDIDATE_BUDGET // (size * size)), 1)]
        offsets = torch.arange(size, device=uv.device)
        cu = low[pick, 0, None, None] + offsets[None, :, None]
        cv = low[pick, 1, None, None] + offsets[None, None, :]
        inside_box = (cu <= high[pick, 0, None, None]) & (cv <= high[pick, 1, None, None])
        pu, pv = cu + 0.5, cv + 0.5
        tri = uv[pick]
        a0, a1, a2 = (tri[:, i, None, None, :] for i in range(3))
        w0 = (a1[..., 0] - pu) * (a2[..., 1] - pv) - (a1[..., 1] - pv) * (a2[..., 0] - pu)
        w1 = (a2[..., 0] - pu) * (a0[..., 1] - pv) - (a2[..., 1] - pv) * (a0[..., 0] - pu)
        w2 = (a0[..., 0] - pu) * (a1[..., 1] - pv) - (a0[..., 1] - pv) * (a1[..., 0] - pu)
        signed = area[pick, None, None]
        b0, b1, b2 = w0 / signed, w1 / signed, w2 / signed
        covered = inside_box & (b0 >= 0) & (b1 >= 0) & (b2 >= 0)
        z = b0 * depth[pick, 0, None, None] + b1 * depth[pick, 1, None, None] + b2 * depth[pick, 2, None, None]
        layer = ((z + radius) / (2 * radius) * layers).floor().clamp(0, layers - 1).long()
        facing = (signed < 0).long().expand_as(layer)
        index = ((facing * layers + layer) * resolution + cu) * resolution + cv
        texels.append(index[covered])
        owners.append(owner[pick, None, None].expand_as(index)[covered])
        start += len(pick)
    if not texels:
        empty = torch.zeros(0, dtype=torch.long, device=triangles.device)
        return empty, empty
    return torch.cat(texels), torch.cat(owners)


def claim_texels(texel: torch.Tensor, pixel: torch.Tensor, pixels_per_view: int, texels_per_axis: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(texel, pixel) pairs with each texel of a view serving one pixel once: where the smoothed surface folds over
    on a plane two neighbouring pixels can cover one texel (and a pixel's two triangles can too); the
    lowest-numbered pixel keeps it, so the pixels of a view stay exactly independent."""
    key = (pixel // pixels_per_view) * texels_per_axis + texel
    total = pixels_per_view * (int(pixel.max()) // pixels_per_view + 1) if len(pixel) else 1
    pairs = torch.unique(key * total + pixel)                   # sorted by texel key, then pixel
    key, pixel = pairs // total, pairs % total
    first = torch.ones_like(key, dtype=torch.bool)
    first[1:] = key[1:] != key[:-1]
    return key[first] % texels_per_axis, pixel[first]


class ConsistentNoise(nn.Module):
    """The noise hook's state: texels [3 axes, 2 facings x layers x resolution^2, channels] and a background noise
    [channels, h, w], drawn once from `seed` (so a run resumes them from its checkpoint)."""

    def __init__(self, options: ConsistentNoiseOptions, channels: int, size: tuple[int, int], radius: float,
                 seed: int = 0) -> None:
        super().__init__()
        self.options, self.size, self.radius = options, size, radius
        g = torch.Generator().manual_seed(seed)
        per_axis = 2 * options.layers * options.resolution**2
        self.register_buffer("texels", torch.randn(3, per_axis, channels, generator=g))
        self.register_buffer("background", torch.randn(channels, *size, generator=g))

    def consistent(self, surface: torch.Tensor, opacity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(noise [B, C, h, w], whether each pixel saw the surface [B, h, w]) from rendered surface points
        [B, H, W, 3] and opacity [B, H, W]; H, W multiples of the noise size."""
        b, height, width = opacity.shape
        h, w = self.size
        if height % h or width % w or height // h != width // w:
            raise ConfigError(f"noise: the render size {height}x{width} must be the same whole multiple of the "
                              f"noise resolution {h}x{w} on both sides")
        o = self.options
        corners, concrete = corner_points(surface, opacity, height // h, o.opacity_threshold)
        triangles, owner = pixel_triangles(corners, concrete)
        channels = self.texels.shape[-1]
        sums = torch.zeros(b * h * w, channels, device=surface.device)
        counts = torch.zeros(b * h * w, device=surface.device)
        for axis in range(3):
            texel, pixel = claim_texels(*covered_texels(triangles.float(), owner, axis, self.radius, o.resolution,
                                                        o.layers), h * w, self.texels.shape[1])
            sums.index_add_(0, pixel, self.texels[axis][texel])
            counts.index_add_(0, pixel, torch.ones_like(pixel, dtype=counts.dtype))
        own = F.avg_pool2d(opacity[:, None], height // h)[:, 0] > o.opacity_threshold
        seen = (counts > 0) & own.flatten()
        noise = torch.where(seen[:, None], sums / counts.clamp_min(1).sqrt()[:, None],
                            rearrange(self.background, "c h w -> (h w) c").repeat(b, 1))
        return rearrange(noise, "(b h w) c -> b c h w", b=b, h=h), rearrange(seen, "(b h w) -> b h w", b=b, h=h)

    def forward(self, surface: torch.Tensor, opacity: torch.Tensor, fresh: torch.Tensor | None = None
                ) -> torch.Tensor:
        """The noise an objective adds: sqrt_beta consistent + sqrt(1 - sqrt_beta^2) `fresh` (standard normal, the
        noise's shape; needed when sqrt_beta < 1)."""
        return mix_fresh(self.consistent(surface, opacity)[0], fresh, self.options.sqrt_beta)

    @torch.no_grad()
    def refresh(self, generator: torch.Generator | None = None) -> None:
        """One SDE refresh of texels and background (CFD's weight_decay = sqrt(1 - gamma)); nothing when gamma = 0."""
        refresh_buffers([self.texels, self.background], self.options.refresh, generator)


def mix_fresh(consistent: torch.Tensor, fresh: torch.Tensor | None, sqrt_beta: float) -> torch.Tensor:
    """sqrt_beta consistent + sqrt(1 - sqrt_beta^2) fresh, both standard normal, so the mix is too (CFD's
    `sqrt_beta`); the consistent noise alone at sqrt_beta = 1."""
    if sqrt_beta == 1:
        return consistent
    if fresh is None:
        raise ValueError("noise.sqrt_beta below 1 mixes in fresh noise; pass it")
    return sqrt_beta * consistent + math.sqrt(1 - sqrt_beta**2) * fresh


@torch.no_grad()
def refresh_buffers(buffers: list[torch.Tensor], gamma: float, generator: torch.Generator | None = None) -> None:
    """buffer <- sqrt(1 - gamma) buffer + sqrt(gamma) N(0, 1), in place (unit variance kept); nothing at gamma 0."""
    if gamma == 0:
        return
    for buffer in buffers:
        fresh = torch.randn(buffer.shape, generator=generator).to(buffer.device)
        buffer.mul_(math.sqrt(1 - gamma)).add_(math.sqrt(gamma) * fresh)
