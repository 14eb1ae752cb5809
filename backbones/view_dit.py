"""A DiT conditioned on a view: what is seen (a class label) and from where (the camera), the 2-D teacher a
text-to-3D field is distilled from (Zero-1-to-3 and MVDream condition on the camera the same way: an embedding of
it added to the timestep's). The condition is one float tensor [B, 6] so that classifier-free dropout can swap
rows for the null view: label, camera present (1) or dropped (0), elevation, azimuth (radians), distance, fovy."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from potstill.backbones.cameras import Cameras, look_at_origin
from potstill.backbones.dit import DiT, DiTOptions
from potstill.core.registry import BACKBONES

LABEL, PRESENT, ELEVATION, AZIMUTH, DISTANCE, FOVY = range(6)
CONDITION_WIDTH = 6


def view_condition(labels: torch.Tensor, cameras: Cameras) -> torch.Tensor:
    """The [B, 6] condition of views of classes `labels` [B] seen by `cameras`."""
    return torch.stack([labels.float(), torch.ones_like(cameras.fovy), cameras.elevation, cameras.azimuth,
                        cameras.distance, cameras.fovy], -1)


def condition_cameras(cond: torch.Tensor) -> Cameras:
    """The cameras a [B, 6] view condition names (the renderer's input)."""
    c = cond.double()
    return look_at_origin(c[:, ELEVATION], c[:, AZIMUTH], c[:, DISTANCE], c[:, FOVY]).to(cond.device)


@dataclass
class ViewDiTOptions(DiTOptions):
    """DiT options; `num_classes` counts the views' subjects (a null class is added for guidance). A null
    `input_size` or `num_classes` is filled from the data by `train-teacher`."""

    input_size: int | None = 32
    num_classes: int | None = None
    learn_sigma: bool = False


class CameraEmbedder(nn.Module):
    """An MLP on (sin, cos elevation, sin, cos azimuth, distance, tan fovy/2); a learned vector when dropped."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(6, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.null = nn.Parameter(torch.zeros(hidden))

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        e, a = cond[:, ELEVATION], cond[:, AZIMUTH]
        features = torch.stack([e.sin(), e.cos(), a.sin(), a.cos(), cond[:, DISTANCE], (cond[:, FOVY] / 2).tan()], -1)
        present = cond[:, PRESENT, None]
        return present * self.mlp(features) + (1 - present) * self.null


class ViewDiT(DiT):
    """`view_dit(x, c_noise, cond)`: cond [B, 6] from `view_condition`; the null condition drops label and camera
    together (the unconditional model of classifier-free guidance)."""

    def __init__(self, options: ViewDiTOptions) -> None:
        for key in ("input_size", "num_classes"):
            if not getattr(options, key):
                raise ValueError(f"backbone.{key}: a view DiT needs it (train-teacher fills a null from its data)")
        super().__init__(options)
        self.camera_embedder = CameraEmbedder(options.hidden_size)

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        null = torch.zeros_like(cond)
        null[:, LABEL] = self.options.num_classes
        return null

    def embed_condition(self, cond) -> torch.Tensor:
        if cond is None or not cond.is_floating_point() or cond.shape[-1] != CONDITION_WIDTH:
            raise ValueError(f"view_dit: the condition must be a float tensor [B, {CONDITION_WIDTH}] from "
                             f"view_condition, got {None if cond is None else tuple(cond.shape)}")
        return self.y_embedder(cond[:, LABEL].round().long()) + self.camera_embedder(cond)


BACKBONES.register("view_dit", ViewDiTOptions)(ViewDiT)
