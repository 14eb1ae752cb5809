"""Binary PLY point clouds (Turk 1994; little-endian float32 x, y, z and uchar red, green, blue per vertex), the
format `potstill export --ply` writes a 3-D field's surface in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from potstill.core.checkpoint import write_bytes_atomic

VERTEX = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])


def write_ply(path: Path, points: torch.Tensor, colors: torch.Tensor) -> Path:
    """Write points [N, 3] (world units) with colours [N, 3] in [0, 1] atomically; returns the path."""
    if points.ndim != 2 or points.shape[1] != 3 or colors.shape != points.shape:
        raise ValueError(f"write_ply: points and colours must both be [N, 3], got {tuple(points.shape)} and "
                         f"{tuple(colors.shape)}")
    vertices = np.empty(len(points), dtype=VERTEX)
    xyz = points.detach().cpu().float().numpy()
    rgb = (colors.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    for i, name in enumerate(("x", "y", "z")):
        vertices[name] = xyz[:, i]
    for i, name in enumerate(("red", "green", "blue")):
        vertices[name] = rgb[:, i]
    header = ("ply\nformat binary_little_endian 1.0\ncomment written by potstill\n"
              f"element vertex {len(points)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    path = Path(path)
    write_bytes_atomic(path, header.encode("ascii") + vertices.tobytes())
    return path
