"""The pure-PyTorch renderer against a ball of known constant density, whose opacity, expected depth and
half-opacity surface along a ray are known in closed form; gradients reach the fields' parameters."""

import math

import pytest
import torch
import torch.nn.functional as F

from potstill.backbones.cameras import camera_rays, turntable_cameras
from potstill.backbones.fields import Field, MLPField, MLPFieldOptions, VoxelGrid, VoxelGridOptions
from potstill.backbones.volume_renderer import EXP_GRADIENT_CAP, RendererOptions, TruncatedExp, render, sphere_interval
from potstill.core.config import ConfigError, from_dict

BALL_RADIUS = 0.5
BALL_DENSITY = 3.0
RAW_INSIDE = {"softplus": math.log(math.expm1(BALL_DENSITY)), "trunc_exp": math.log(BALL_DENSITY)}


class ConstantBall(Field):
    """activation(raw) = BALL_DENSITY inside the ball of BALL_RADIUS (world units, scene radius 1), about 0
    outside."""

    def __init__(self, activation: str = "softplus") -> None:
        super().__init__()
        self.raw_inside = RAW_INSIDE[activation]

    def forward(self, points):
        inside = points.norm(dim=-1) < BALL_RADIUS
        raw = torch.where(inside, self.raw_inside, -40.0)
        return raw, torch.ones_like(points) * torch.tensor([1.0, 0.0, 0.0])


def analytic_ball(origins, directions):
    """(opacity, expected depth given a hit, distance to opacity 1/2) of the constant ball along each ray."""
    enter, leave = sphere_interval(origins, directions, BALL_RADIUS)
    length = leave - enter
    opacity = -torch.expm1(-BALL_DENSITY * length)
    depth = enter + 1 / BALL_DENSITY - length * torch.exp(-BALL_DENSITY * length) / opacity.clamp_min(1e-12)
    return opacity, depth, enter + math.log(2) / BALL_DENSITY


@pytest.mark.parametrize("activation", sorted(RAW_INSIDE))
def test_a_ball_of_constant_density_renders_its_analytic_opacity_depth_and_surface(activation):
    cameras = turntable_cameras(3, elevation_deg=20.0, distance=1.8, fovy_deg=45.0)
    origins, directions = camera_rays(cameras, 24, 24)
    options = RendererOptions(samples=2048, blob_scale=0.0, density_activation=activation)
    out = render(ConstantBall(activation), origins, directions, options)
    opacity, depth, surface_distance = analytic_ball(origins, directions)
    assert (opacity > 0.5).sum() > 100                    # the ball fills a good part of each view
    torch.testing.assert_close(out.opacity, opacity, atol=3e-3, rtol=0)
    thick = opacity > 0.2
    torch.testing.assert_close(out.depth[thick], depth[thick], atol=3e-3, rtol=0)
    assert torch.equal(out.hit, opacity >= 0.5) or (out.hit ^ (opacity >= 0.5)).sum() <= 2
    both = out.hit & (opacity >= 0.5)
    expected_surface = origins + surface_distance[..., None] * directions
    torch.testing.assert_close(out.surface[both], expected_surface[both], atol=1e-3, rtol=0)
    red = torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(out.rgb, opacity[..., None] * red + (1 - opacity[..., None]), atol=3e-3, rtol=0)


def test_chunking_changes_nothing():
    origins, directions = camera_rays(turntable_cameras(2), 8, 8)
    field = MLPField(MLPFieldOptions())
    torch.nn.init.normal_(field.mlp[-1].weight)
    whole = render(field, origins, directions, RendererOptions(samples=32))
    chunked = render(field, origins, directions, RendererOptions(samples=32, chunk=7))
    for name in ("rgb", "opacity", "depth", "surface", "hit"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name))


@pytest.mark.parametrize("make", [lambda: VoxelGrid(VoxelGridOptions(resolution=8)),
                                  lambda: MLPField(MLPFieldOptions(width=16))])
def test_gradients_of_a_rendered_view_reach_the_field(make):
    field = make()
    origins, directions = camera_rays(turntable_cameras(2), 8, 8)
    out = render(field, origins, directions, RendererOptions(samples=16), jitter=True)
    (out.rgb.sum() + out.opacity.sum()).backward()
    grads = [p.grad for p in field.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_the_voxel_grid_interpolates_trilinearly_between_its_corners():
    grid = VoxelGrid(VoxelGridOptions(resolution=2))
    with torch.no_grad():
        grid.grid.zero_()
        grid.grid[0, 0, :, :, 1] = 1.0                     # the x = +1 face (W axis) has raw density 1
    raw, colour = grid(torch.tensor([[0.0, 0.3, -0.2], [1.0, 0.0, 0.0], [-1.0, 0.5, 0.5]]))
    torch.testing.assert_close(raw, torch.tensor([0.5, 1.0, 0.0]))
    torch.testing.assert_close(colour, torch.full((3, 3), 0.5))


def test_the_density_scale_multiplies_the_density_and_its_adam_step():
    """`density_scale` k: the raw density read is k times the grid's, colour untouched; one Adam step (about the
    rate whatever the gradient's size) moves the read density k times as far as with k = 1."""
    moved = []
    for scale in (1.0, 4.0):
        grid = VoxelGrid(VoxelGridOptions(resolution=2, density_scale=scale))
        with torch.no_grad():
            grid.grid[0, 0] = 0.5
        points = torch.tensor([[0.1, -0.2, 0.3]])
        before, colour = grid(points)
        torch.testing.assert_close(before, torch.tensor([0.5 * scale]))
        torch.testing.assert_close(colour, torch.full((1, 3), 0.5))
        optimizer = torch.optim.Adam(grid.parameters(), lr=0.01)
        (-before.sum()).backward()
        optimizer.step()
        moved.append(float((grid(points)[0] - before).detach()))
    assert moved[1] == pytest.approx(4 * moved[0], rel=1e-4)


def test_the_blob_bias_starts_an_empty_field_as_a_ball():
    origins, directions = camera_rays(turntable_cameras(1, elevation_deg=0.0, distance=2.0), 17, 17)
    out = render(VoxelGrid(VoxelGridOptions(resolution=4)), origins, directions, RendererOptions())
    assert out.opacity[0, 8, 8] > 0.9 and out.opacity[0, 0, 0] < 0.05
    torch.testing.assert_close(out.opacity[0], out.opacity[0].flip(1), atol=1e-5, rtol=0)


def test_renderer_options_name_the_bad_key():
    with pytest.raises(ConfigError, match=r"generator\.renderer\.samples: must be at least 1"):
        from_dict(RendererOptions, {"samples": 0}, "generator.renderer")
    with pytest.raises(ConfigError, match=r"generator\.renderer\.background: must be an \[r, g, b\]"):
        from_dict(RendererOptions, {"background": [1.0, 1.0]}, "generator.renderer")
    with pytest.raises(ConfigError, match=r"generator\.renderer\.density_activation: must be one of"):
        from_dict(RendererOptions, {"density_activation": "relu"}, "generator.renderer")
    with pytest.raises(ConfigError, match=r"generator\.field\.density_scale: must be"):
        from_dict(VoxelGridOptions, {"density_scale": 0.0}, "generator.field")


def test_surface_points_are_none_where_rays_miss():
    origins = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.9, 3.0]])
    directions = F.normalize(torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]]), dim=-1)
    out = render(ConstantBall(), origins, directions, RendererOptions(samples=512, blob_scale=0.0))
    assert out.hit.tolist() == [True, False]
    torch.testing.assert_close(out.surface[0], torch.tensor([0.0, 0.0, BALL_RADIUS - math.log(2) / BALL_DENSITY]),
                               atol=2e-3, rtol=0)


def test_truncated_exp_is_exp_with_its_gradient_capped():
    """trunc_exp: exp(x) forward; the gradient exp(x) below the cap (checked numerically) and exp(cap) above it,
    so a saturated density still learns and never overflows its gradient."""
    x = torch.tensor([-3.0, 0.5, 4.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(TruncatedExp.apply, (x,))
    high = torch.tensor([20.0, 100.0], dtype=torch.float64, requires_grad=True)
    value = TruncatedExp.apply(high)
    torch.testing.assert_close(value.detach(), torch.exp(high.detach()))
    value.sum().backward()
    torch.testing.assert_close(high.grad, torch.full_like(high, math.exp(EXP_GRADIENT_CAP)))
