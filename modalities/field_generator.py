"""Text-to-3D students: a 3-D field rendered from the cameras its view conditions name (`generator.kind: field`
with a `voxel_grid` or `mlp_field`), or, for CFD's 2-D check, the samples themselves (`field: identity`, a set of
learnable images or vectors, each its own scene). Both keep what the noise hook needs from their last forward."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from potstill.backbones.cameras import Cameras, camera_rays
from potstill.backbones.fields import Field
from potstill.backbones.view_dit import condition_cameras
from potstill.backbones.volume_renderer import Render, RendererOptions, render
from potstill.core.config import AT_LEAST_1, RULES, SECTION_REGISTRIES, Component, Rule
from potstill.core.generator import Generator, particle_index
from potstill.core.registry import FIELDS, GENERATORS

EMPTY_OPACITY = 0.01         # a view whose opacity stays below this everywhere shows nothing


@dataclass
class IdentityOptions:
    """`count` learnable samples drawn N(0, init_std^2) at the start; the generator's noise picks one."""

    count: int = 256
    init_std: float = 1.0


class IdentityField(nn.Module):
    """The samples [count, *sample_shape] themselves, the parameters SDS, VSD and CFD move directly."""

    def __init__(self, options: IdentityOptions, sample_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.values = nn.Parameter(torch.randn(options.count, *sample_shape) * options.init_std)


RULES[IdentityOptions] = {"count": AT_LEAST_1}
FIELDS.register("identity", IdentityOptions)(lambda options, sample_shape: IdentityField(options, sample_shape))


class IdentityGenerator(Generator):
    """Sample k of the identity field, k picked by the noise (the normal CDF of its first element, scaled to the
    count: uniform over samples, the same noise the same sample); `last_index` keeps the picks."""

    def __init__(self, identity: IdentityField) -> None:
        super().__init__()
        self.field = identity
        self.last_index: torch.Tensor | None = None

    def forward(self, noise: torch.Tensor, cond=None) -> torch.Tensor:
        self.last_index = particle_index(noise, len(self.field.values))
        return self.field.values[self.last_index]


class FieldGenerator(Generator):
    """Views [B, 3, S, S] in [-1, 1] of a 3-D field from the cameras in the view conditions [B, 6] (stratified
    samples jittered while training), rendered at `render_size` and, when that differs, resized to the teacher's
    S (area-averaged down, bilinear up); `last_render` keeps the detached surface and opacity of the last
    render, at its own size."""

    def __init__(self, scene: Field, renderer: RendererOptions, image_size: int, render_size: int | None = None,
                 empty_patience: int = 50, opacity_entropy: float = 0.0, opacity_sparsity: float = 0.0) -> None:
        super().__init__()
        self.field, self.renderer, self.image_size = scene, renderer, image_size
        self.render_size = render_size or image_size
        self.empty_patience, self.opacity_entropy, self.opacity_sparsity = (empty_patience, opacity_entropy,
                                                                            opacity_sparsity)
        self.register_buffer("empty_steps", torch.zeros((), dtype=torch.long))
        self.last_render: Render | None = None
        self.last_opacity: torch.Tensor | None = None

    def penalty(self) -> torch.Tensor | None:
        """threestudio's `lambda_opaque` and `lambda_sparsity`, each summed over a view's pixels and averaged over
        the batch: `opacity_entropy` times the binary entropy of each pixel's opacity pushes pixels to empty or
        opaque, so the surface is a sharp shell rather than a soft fog (the soft rim of a 32-pixel view leaves it
        a fog otherwise); `opacity_sparsity` times sqrt(opacity^2 + 0.01) charges for matter that no view needs,
        such as white matter against the white background, which no objective sees but the surface would keep."""
        if not (self.opacity_entropy or self.opacity_sparsity) or self.last_opacity is None:
            return None
        o = self.last_opacity.clamp(1e-5, 1 - 1e-5)
        self.last_opacity = None
        entropy = -(o * o.log() + (1 - o) * (1 - o).log())
        sparsity = (o.square() + 0.01).sqrt()
        return (self.opacity_entropy * entropy + self.opacity_sparsity * sparsity).sum() / o.shape[0]

    def check_not_empty(self, opacity: torch.Tensor) -> None:
        """Refuse to go on once every training view has been empty (opacity below EMPTY_OPACITY everywhere) for
        `empty_patience` forwards in a row: the gradient through an empty field is zero, so it would stay empty."""
        empty = bool(opacity.detach().max() < EMPTY_OPACITY)
        self.empty_steps.copy_(self.empty_steps + 1 if empty else torch.zeros_like(self.empty_steps))
        if int(self.empty_steps) >= self.empty_patience:
            raise ValueError(f"generator.field: the field has rendered nothing (opacity below {EMPTY_OPACITY} in "
                             f"every view) for {self.empty_patience} steps, so no gradient reaches it; the density "
                             f"bias (generator.renderer.blob_scale {self.renderer.blob_scale}, blob_std "
                             f"{self.renderer.blob_std}) starts a field as a ball of radius about blob_std: raise "
                             "them, or lower the generator's learning rate")

    def render_views(self, cameras: Cameras, image_size: int | None = None, jitter: bool = False) -> Render:
        """The field seen by `cameras` (moved to the field's device) at `image_size` (default the teacher's)."""
        size = image_size or self.image_size
        origins, directions = camera_rays(cameras.to(self.empty_steps.device), size, size)
        return render(self.field, origins, directions, self.renderer, jitter)

    def forward(self, noise: torch.Tensor, cond=None) -> torch.Tensor:
        out = self.render_views(condition_cameras(cond), self.render_size, jitter=self.training)
        if self.training and torch.is_grad_enabled():
            self.check_not_empty(out.opacity)
            self.last_opacity = out.opacity
        self.last_render = out.detach()
        views = rearrange(out.rgb, "b h w c -> b c h w")
        if self.render_size > self.image_size:
            views = F.interpolate(views, size=self.image_size, mode="area")
        elif self.render_size < self.image_size:
            views = F.interpolate(views, size=self.image_size, mode="bilinear", align_corners=False)
        return views * 2 - 1

    @torch.no_grad()
    def surface_cloud(self, out: Render) -> tuple[torch.Tensor, torch.Tensor]:
        """(points [N, 3], colours [N, 3] in [0, 1]): where the rendered views' opacity crosses 1/2, and the colour
        its ray shows there, the background taken out: (rgb - (1 - opacity) background) / opacity (as NeRF point
        clouds are exported; the cloud `potstill export --ply` writes and the 3-D scores compare). Not the field's
        colour at the point: trilinear lookup there mixes in voxels in front of the surface whose colour no view
        constrains (fitted to exact renders, a box's field colour at its surface was off by 0.16, its rays' by
        under 0.01)."""
        hit = out.hit
        background = torch.tensor(self.renderer.background, device=out.rgb.device, dtype=out.rgb.dtype)
        opacity = out.opacity[hit][:, None]
        colours = (out.rgb[hit] - (1 - opacity) * background) / opacity
        return out.surface[hit], colours.clamp(0, 1)


@dataclass
class FieldGeneratorOptions:
    """`field`: a registered field (`voxel_grid`, `mlp_field`, or `identity`: the samples themselves);
    `renderer`: how a 3-D field becomes views (unused by `identity`); `render_size`: pixels across a rendered
    view (null: the teacher's), which needs `resize: true` to differ from the teacher's; `empty_patience`: training
    steps of all-empty views after which the run stops with an error; `opacity_entropy`, `opacity_sparsity`: the
    weights of the opacity entropy and sparsity penalties (0: none)."""

    field: Component = dataclasses.field(
        default_factory=lambda: Component("voxel_grid", FIELDS.get("voxel_grid").options()))
    renderer: RendererOptions = dataclasses.field(default_factory=RendererOptions)
    render_size: int | None = None
    resize: bool = False
    empty_patience: int = 50
    opacity_entropy: float = 0.0
    opacity_sparsity: float = 0.0


SECTION_REGISTRIES[FieldGeneratorOptions] = {"field": FIELDS}
RULES[FieldGeneratorOptions] = {"render_size": AT_LEAST_1, "empty_patience": AT_LEAST_1,
                                "opacity_entropy": Rule(lambda v: v >= 0, "at least 0"),
                                "opacity_sparsity": Rule(lambda v: v >= 0, "at least 0")}


@GENERATORS.register("field", FieldGeneratorOptions)
def build_field_generator(options: FieldGeneratorOptions, context) -> Generator:
    sample_shape = tuple(context.modality.sample_shape)
    scene = FIELDS.get(options.field.kind, "generator.field.kind").builder(options.field.options, sample_shape)
    if isinstance(scene, IdentityField):
        return IdentityGenerator(scene)
    if len(sample_shape) != 3 or sample_shape[0] != 3 or sample_shape[1] != sample_shape[2]:
        raise ValueError(f"generator.field.kind: a 3-D field renders square RGB views, and this teacher's samples "
                         f"are {list(sample_shape)}; use field: identity for other samples")
    size = sample_shape[-1]
    if options.render_size is not None and options.render_size != size and not options.resize:
        raise ValueError(f"generator.render_size: {options.render_size} differs from the teacher's {size}x{size} "
                         "views; set generator.resize: true to resize the renders to it, or leave render_size null")
    return FieldGenerator(scene, options.renderer, size, options.render_size, options.empty_patience,
                          options.opacity_entropy, options.opacity_sparsity)
