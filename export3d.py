"""`potstill export RUN --ply out.ply [--turntable out.mp4|out.png --frames 36]`: a text-to-3D run's field as a
binary PLY of its surface points (where the accumulated opacity of views from all round crosses 1/2) with their
colours, in the world frame the shapes' sizes are given in, and a turntable of views."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange
from torchvision.utils import save_image

from potstill.backbones.cameras import sphere_cameras, turntable_cameras
from potstill.modalities.field_generator import FieldGenerator
from potstill.modalities.mp4 import write_mp4
from potstill.modalities.ply import write_ply
from potstill.runs import open_run

TURNTABLE_ELEVATION = 15.0
TURNTABLE_FPS = 12


@dataclass
class ExportRequest:
    run: str
    ply: Path | None = None
    turntable: Path | None = None
    frames: int = 36
    views: int = 48
    size: int = 96
    device: str = "auto"


def turntable_settings(modality) -> tuple[float, float]:
    """(distance, fovy in degrees) in the middle of the run's camera ranges."""
    cameras = getattr(modality, "cameras", None)
    if cameras is None:
        return 1.75, 50.0
    return sum(cameras.distance_range) / 2, sum(cameras.fovy_range) / 2


@torch.no_grad()
def export_run(request: ExportRequest) -> list[Path]:
    """Write what the request asks for; returns the files written."""
    if request.ply is None and request.turntable is None:
        raise ValueError("export: give --ply and/or --turntable")
    if request.turntable is not None and request.turntable.suffix not in (".mp4", ".png"):
        raise ValueError(f"--turntable: {request.turntable} must end in .mp4 or .png")
    distiller = open_run(request.run, request.device)
    field = distiller.ema.model
    if not isinstance(field, FieldGenerator):
        raise ValueError(f"export: {request.run} trained a {type(field).__name__}, not a 3-D field "
                         "(generator.kind: field with a voxel_grid or mlp_field)")
    field.eval()
    written = []
    if request.ply is not None:
        points, colours = field.surface_cloud(field.render_views(sphere_cameras(request.views), request.size))
        written.append(write_ply(request.ply, points.cpu(), colours.cpu()))
    if request.turntable is not None:
        distance, fovy = turntable_settings(distiller.modality)
        cameras = turntable_cameras(request.frames, TURNTABLE_ELEVATION, distance, fovy)
        rgb = field.render_views(cameras, request.size).rgb.cpu().clamp(0, 1)
        request.turntable.parent.mkdir(parents=True, exist_ok=True)
        if request.turntable.suffix == ".mp4":
            write_mp4((rgb * 255).round().to(torch.uint8), request.turntable, TURNTABLE_FPS)
        else:
            save_image(rearrange(rgb, "f h w c -> f c h w"), request.turntable,
                       nrow=math.ceil(math.sqrt(request.frames)), padding=1, pad_value=0.5)
        written.append(request.turntable)
    return written
