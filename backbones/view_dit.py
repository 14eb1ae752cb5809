"""A DiT conditioned on a view: what is seen (a class label) and from where (the camera), the 2-D teacher a
text-to-3D field is distilled from (Zero-1-to-3 and MVDream condition on the camera the same way: an embedding of
it added to the timestep's). The condition is one float tensor [B, 6] so that classifier-free dropout can swap
rows for the null view: label, camera present (1) or dropped (0), elevation, azimuth (radians), distance, fovy;
a text teacher's condition carries the subject's text embedding after those six."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from potstill.backbones.cameras import Cameras, camera_rays, look_at_origin
from potstill.backbones.dit import DiT, DiTOptions
from potstill.core.registry import BACKBONES

LABEL, PRESENT, ELEVATION, AZIMUTH, DISTANCE, FOVY = range(6)
CONDITION_WIDTH = 6


def view_condition(labels: torch.Tensor, cameras: Cameras, text: torch.Tensor | None = None) -> torch.Tensor:
    """The [B, 6] condition of views of classes `labels` [B] seen by `cameras`; [B, 6 + D] with the subjects' text
    embeddings `text` [B, D] (a text teacher reads those and ignores the label)."""
    view = torch.stack([labels.float(), torch.ones_like(cameras.fovy), cameras.elevation, cameras.azimuth,
                        cameras.distance, cameras.fovy], -1)
    return view if text is None else torch.cat([view, text.to(view)], -1)


def condition_cameras(cond: torch.Tensor) -> Cameras:
    """The cameras a [B, 6] view condition names (the renderer's input)."""
    c = cond.double()
    return look_at_origin(c[:, ELEVATION], c[:, AZIMUTH], c[:, DISTANCE], c[:, FOVY]).to(cond.device)


@dataclass
class ViewDiTOptions(DiTOptions):
    """DiT options; `num_classes` counts the views' subjects (a null class is added for guidance), or `text_dim`
    is the width of their text embeddings (a text teacher; num_classes 0). A null `input_size`, `num_classes` or
    `text_dim` is filled from the data or the text encoder by `train-teacher`."""

    input_size: int | None = 32
    num_classes: int | None = None
    text_dim: int | None = 0
    learn_sigma: bool = False
    ray_map: bool = False


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


class RayEmbedder(nn.Module):
    """Each token's pixel rays as Plücker coordinates (direction d, moment o x d; CAT3D, Gao et al. 2024),
    patchified and projected: where every token looks, which the global camera embedding leaves the network to
    work out. Zero for rows whose camera is dropped."""

    def __init__(self, image_size: int, patch: int, hidden: int) -> None:
        super().__init__()
        self.image_size, self.patch = image_size, patch
        self.proj = nn.Linear(6 * patch * patch, hidden)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        present = cond[:, PRESENT] > 0.5
        origins, directions = camera_rays(condition_cameras(cond), self.image_size, self.image_size)
        plucker = torch.cat([directions, torch.linalg.cross(origins, directions)], -1).to(cond.dtype)
        plucker = torch.where(present[:, None, None, None], plucker, torch.zeros_like(plucker))
        return self.proj(rearrange(plucker, "b (h p) (w q) c -> b (h w) (p q c)", p=self.patch, q=self.patch))


class ViewDiT(DiT):
    """`view_dit(x, c_noise, cond)`: cond [B, 6] from `view_condition`; the null condition drops label and camera
    together (the unconditional model of classifier-free guidance)."""

    def __init__(self, options: ViewDiTOptions) -> None:
        if not options.input_size:
            raise ValueError("backbone.input_size: a view DiT needs it (train-teacher fills a null from its data)")
        if bool(options.num_classes) == bool(options.text_dim):
            raise ValueError(f"backbone.num_classes, backbone.text_dim: a view DiT's subject is a class label or a "
                             f"text embedding, exactly one of the two (got num_classes {options.num_classes}, "
                             f"text_dim {options.text_dim})")
        super().__init__(options)
        self.condition_width = CONDITION_WIDTH + (options.text_dim or 0)
        self.camera_embedder = CameraEmbedder(options.hidden_size)
        self.ray_embedder = (RayEmbedder(options.input_size, options.patch_size, options.hidden_size)
                             if options.ray_map else None)

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        null = torch.zeros_like(cond)
        null[:, LABEL] = self.options.num_classes or 0
        return null

    def embed_tokens(self, x: torch.Tensor, cond) -> torch.Tensor:
        """The patch tokens, plus their rays with `ray_map`."""
        tokens = super().embed_tokens(x, cond)
        return tokens if self.ray_embedder is None else tokens + self.ray_embedder(cond)

    def embed_condition(self, cond) -> torch.Tensor:
        if cond is None or not cond.is_floating_point() or cond.shape[-1] != self.condition_width:
            raise ValueError(f"view_dit: the condition must be a float tensor [B, {self.condition_width}] from "
                             f"view_condition{' with text embeddings' if self.text_embedder else ''}, got "
                             f"{None if cond is None else tuple(cond.shape)}")
        subject = (self.text_embedder(cond[:, CONDITION_WIDTH:]) if self.text_embedder is not None
                   else self.y_embedder(cond[:, LABEL].round().long()))
        return subject + self.camera_embedder(cond)


BACKBONES.register("view_dit", ViewDiTOptions)(ViewDiT)
