"""Exact ray casting of the text-to-3D toy's primitives: ellipsoid, box, torus and cylinder, axis-aligned, centred
at the origin, `size` = their extents along x, y, z (world frame z-up). Each is a canonical shape in [-1, 1]^3
scaled by size / 2 (the torus's z by size_z / (2 TORUS_TUBE)); a ray keeps its parameter t under the scaling, so
the hit is found in canonical space: closed form for ellipsoid, box and cylinder, the first root of the torus's
quartic from its companion matrix, polished to float precision."""

from __future__ import annotations

import torch

KINDS = ("ellipsoid", "box", "torus", "cylinder")
TORUS_TUBE = 0.35           # the canonical torus: ring radius 1 - TORUS_TUBE, tube radius TORUS_TUBE
REAL_TOLERANCE = 1e-6       # a companion eigenvalue this close to the real axis is a (grazing) real root
NEWTON_STEPS = 3
INF = float("inf")


def canonical_scale(kind: str, size: torch.Tensor) -> torch.Tensor:
    """The per-axis factors [3] that map the canonical shape onto one of extents `size` [3]."""
    scale = size / 2
    return torch.cat([scale[:2], scale[2:] / TORUS_TUBE]) if kind == "torus" else scale


def _quadratic_first(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two roots (smaller first) of a t^2 + b t + c (inf where none)."""
    disc = b * b - 4 * a * c
    root = disc.clamp_min(0).sqrt()
    a = torch.where(a.abs() < 1e-12, torch.full_like(a, 1e-12), a)
    low, high = (-b - root) / (2 * a), (-b + root) / (2 * a)
    return torch.where(disc >= 0, low, INF), torch.where(disc >= 0, high, INF)


def _slab(o: torch.Tensor, d: torch.Tensor, bound: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(entry, exit) of rays through the box |p_i| <= bound_i (entry > exit: a miss); o, d [N, k]."""
    safe = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t1, t2 = (-bound - o) / safe, (bound - o) / safe
    return torch.minimum(t1, t2).amax(-1), torch.maximum(t1, t2).amin(-1)


def _first_positive(*candidates: torch.Tensor) -> torch.Tensor:
    stacked = torch.stack(candidates, -1)
    return torch.where(stacked > 1e-9, stacked, INF).amin(-1)


def _ellipsoid(o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    low, high = _quadratic_first((d * d).sum(-1), 2 * (o * d).sum(-1), (o * o).sum(-1) - 1)
    return _first_positive(low, high)


def _box(o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    entry, exit_ = _slab(o, d, torch.ones(3, dtype=o.dtype))
    return torch.where(entry <= exit_, _first_positive(entry, exit_), INF)


def _cylinder(o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """The side x^2 + y^2 = 1 within |z| <= 1, or a cap z = +-1 within the unit disc."""
    low, high = _quadratic_first((d[:, :2] ** 2).sum(-1), 2 * (o[:, :2] * d[:, :2]).sum(-1),
                                 (o[:, :2] ** 2).sum(-1) - 1)
    sides = [torch.where((o[:, 2] + t * d[:, 2]).abs() <= 1, t, INF) for t in (low, high)]
    caps = []
    for z in (-1.0, 1.0):
        t = (z - o[:, 2]) / torch.where(d[:, 2].abs() < 1e-12, torch.full_like(d[:, 2], 1e-12), d[:, 2])
        radial = ((o[:, :2] + t[:, None] * d[:, :2]) ** 2).sum(-1)
        caps.append(torch.where(radial <= 1, t, INF))
    return _first_positive(*sides, *caps)


def _torus(o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """The first positive root of the ring torus's quartic along the ray, (|p|^2 + R^2 - r^2)^2 = 4 R^2 (x^2 + y^2)
    with p = o + t d: the real eigenvalues of its companion matrix, polished by Newton steps."""
    ring, tube = 1 - TORUS_TUBE, TORUS_TUBE
    a, b = (d * d).sum(-1), 2 * (o * d).sum(-1)
    c = (o * o).sum(-1) + ring**2 - tube**2
    e, f, g = (d[:, :2] ** 2).sum(-1), 2 * (o[:, :2] * d[:, :2]).sum(-1), (o[:, :2] ** 2).sum(-1)
    k = 4 * ring**2
    coefficients = torch.stack([a * a, 2 * a * b, b * b + 2 * a * c - k * e, 2 * b * c - k * f, c * c - k * g], -1)
    monic = coefficients[:, 1:] / coefficients[:, :1]
    companion = torch.zeros(len(o), 4, 4, dtype=o.dtype)
    companion[:, 0] = -monic
    companion[:, 1:, :3] = torch.eye(3, dtype=o.dtype)
    roots = torch.linalg.eigvals(companion)
    real = roots.real
    powers = torch.arange(4, -1, -1, dtype=o.dtype)
    for _ in range(NEWTON_STEPS):
        value = (coefficients[:, None, :] * real[..., None] ** powers).sum(-1)
        slope = (coefficients[:, None, :-1] * powers[:-1] * real[..., None] ** (powers[:-1] - 1)).sum(-1)
        real = real - torch.where(slope.abs() > 1e-12, value / slope, torch.zeros_like(value))
    is_real = roots.imag.abs() <= REAL_TOLERANCE * (1 + roots.real.abs())
    return _first_positive(*torch.where(is_real, real, INF).unbind(-1))


HITS = {"ellipsoid": _ellipsoid, "box": _box, "torus": _torus, "cylinder": _cylinder}


def ray_hits(kind: str, size: torch.Tensor, origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """The distance t [...] along each ray (origins, directions [..., 3]) to its first hit of the primitive
    (inf on a miss), computed in float64."""
    scale = canonical_scale(kind, size.double())
    o = (origins.double() / scale).reshape(-1, 3)
    d = (directions.double() / scale).reshape(-1, 3)
    return HITS[kind](o, d).reshape(origins.shape[:-1])
