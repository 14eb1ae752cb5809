"""The text-to-3D toy's law: named primitives (`data/primitives.py`) of one view-independent colour each, rendered
exactly from the random camera sampler onto a white background. A 3-D field distilled from a teacher trained on
these views can be scored against the shape itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from einops import rearrange

from potstill.backbones.cameras import CameraOptions, Cameras, camera_rays, sample_cameras
from potstill.backbones.view_dit import view_condition
from potstill.core.config import ConfigError
from potstill.core.real_data import SeededStream
from potstill.core.registry import DATASETS
from potstill.data.primitives import KINDS, ray_hits

BACKGROUND = 1.0            # white, in [0, 1]


@dataclass
class ShapeSpec:
    """One primitive: `kind` in KINDS, `size` its [x, y, z] extents (world units; the scene is the unit ball),
    `color` its [r, g, b] in [0, 1]; `prompt` its caption for a text-conditioned teacher (null: the name with
    spaces, "red ball")."""

    name: str
    kind: str
    size: list[float]
    color: list[float]
    prompt: str | None = None

    @property
    def caption(self) -> str:
        return self.prompt if self.prompt is not None else self.name.replace("_", " ")

    def check(self, key: str) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"{key}.kind: unknown shape kind {self.kind!r}; valid kinds: {', '.join(KINDS)}")
        if len(self.size) != 3 or any(s <= 0 for s in self.size):
            raise ConfigError(f"{key}.size: must be three positive extents [x, y, z], got {self.size}")
        if torch.tensor(self.size, dtype=torch.float64).norm() / 2 >= 1:
            raise ConfigError(f"{key}.size: the shape must fit inside the unit sphere the renderer bounds (half its "
                              f"diagonal below 1), got {self.size}")
        if len(self.color) != 3 or any(not 0 <= c <= 1 for c in self.color):
            raise ConfigError(f"{key}.color: must be [r, g, b] in [0, 1], got {self.color}")


DEFAULT_SHAPES = [
    {"name": "red_ball", "kind": "ellipsoid", "size": [0.9, 0.9, 0.9], "color": [0.85, 0.2, 0.15]},
    {"name": "green_box", "kind": "box", "size": [0.8, 0.55, 0.45], "color": [0.2, 0.7, 0.3]},
    {"name": "blue_ring", "kind": "torus", "size": [1.1, 1.1, 0.35], "color": [0.2, 0.35, 0.85]},
    {"name": "yellow_can", "kind": "cylinder", "size": [0.6, 0.6, 0.95], "color": [0.9, 0.75, 0.2]},
]


@dataclass
class ShapesOptions:
    """`shapes`: the primitives a teacher learns, by name (class k is the k-th); `image_size`: square views;
    `cameras`: the ranges views are drawn from; `seed`: the stream's."""

    shapes: list[dict[str, Any]] = field(default_factory=lambda: [dict(s) for s in DEFAULT_SHAPES])
    image_size: int = 32
    cameras: CameraOptions = field(default_factory=CameraOptions)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.shapes:
            raise ConfigError("real_data.shapes: must name at least one shape")
        self.specs = []
        for i, raw in enumerate(self.shapes):
            key = f"real_data.shapes[{i}]"
            missing = {"name", "kind", "size", "color"} - set(raw)
            if missing or set(raw) - {"name", "kind", "size", "color", "prompt"}:
                raise ConfigError(f"{key}: needs name, kind, size and color (and may have a prompt); got "
                                  f"{sorted(raw)}")
            spec = ShapeSpec(**raw)
            spec.check(key)
            self.specs.append(spec)
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"real_data.shapes: names must be unique, got {names}")
        if self.image_size < 4:
            raise ConfigError(f"real_data.image_size: must be at least 4, got {self.image_size}")

    def index(self, name: str, key: str) -> int:
        """The class index of the shape called `name`; an unknown name lists the known ones under `key`."""
        names = [s.name for s in self.specs]
        if name not in names:
            raise ConfigError(f"{key}: unknown shape {name!r}; this teacher's shapes: {', '.join(names)}")
        return names.index(name)


def render_shape(spec: ShapeSpec, cameras: Cameras, image_size: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                 torch.Tensor]:
    """Exact views of one shape: (rgb [B, 3, H, W] in [0, 1] on white, silhouette [B, H, W] bool, depth [B, H, W]
    along each unit ray, inf off the shape)."""
    origins, directions = camera_rays(cameras, image_size, image_size)
    depth = ray_hits(spec.kind, torch.tensor(spec.size), origins, directions).float()
    silhouette = torch.isfinite(depth)
    colour = torch.tensor(spec.color, dtype=torch.float32)
    rgb = torch.where(silhouette[..., None], colour, torch.full_like(colour, BACKGROUND))
    return rearrange(rgb, "b h w c -> b c h w"), silhouette, depth


def shape_views(options: ShapesOptions, n: int, generator: torch.Generator,
                captions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n exact views [n, 3, S, S] in [-1, 1] of shapes drawn uniformly, from the random camera sampler, and their
    view conditions [n, 6], or [n, 6 + D] with each shape's caption embedding from `captions` [K, D]."""
    labels = torch.randint(len(options.specs), (n,), generator=generator)
    cameras = sample_cameras(n, options.cameras, generator)
    views = torch.empty(n, 3, options.image_size, options.image_size)
    for k, spec in enumerate(options.specs):
        pick = (labels == k).nonzero()[:, 0]
        if len(pick):
            views[pick] = render_shape(spec, cameras[pick], options.image_size)[0]
    return views * 2 - 1, view_condition(labels, cameras, None if captions is None else captions[labels])


@DATASETS.register("shapes3d", ShapesOptions)
def build_shapes3d(options: ShapesOptions, context) -> SeededStream:
    """`real_data: {kind: shapes3d, shapes, image_size, cameras}`: endless exact views, resumable exactly; with a
    text encoder in the run, each view carries its shape's caption embedding."""
    encoder = getattr(context, "text_encoder", None)
    captions = None if encoder is None else encoder.encode([spec.caption for spec in options.specs])
    return SeededStream(lambda n, g: shape_views(options, n, g, captions), options.seed, options,
                        len(options.specs))
