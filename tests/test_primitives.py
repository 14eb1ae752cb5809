"""The toy's primitives are cast exactly: each first hit lies on the shape's surface and nothing of the shape lies
on the ray before it; a few rays with hand-computed answers; the views are the shape's colour on white."""

import math

import pytest
import torch

from potstill.backbones.cameras import CameraOptions, camera_rays, sample_cameras
from potstill.core.config import ConfigError
from potstill.data.primitives import KINDS, TORUS_TUBE, canonical_scale, ray_hits
from potstill.data.shapes3d import DEFAULT_SHAPES, ShapesOptions, ShapeSpec, render_shape


def implicit(kind: str, p: torch.Tensor) -> torch.Tensor:
    """Negative inside the canonical shape, zero on its surface (written out here, apart from the code)."""
    if kind == "ellipsoid":
        return p.norm(dim=-1) - 1
    if kind == "box":
        return p.abs().amax(-1) - 1
    if kind == "cylinder":
        return torch.maximum(p[..., :2].norm(dim=-1) - 1, p[..., 2].abs() - 1)
    ring = p[..., :2].norm(dim=-1) - (1 - TORUS_TUBE)
    return torch.sqrt(ring**2 + p[..., 2] ** 2) - TORUS_TUBE


@pytest.mark.parametrize("kind", KINDS)
def test_first_hits_lie_on_the_surface_with_nothing_before_them(kind):
    size = torch.tensor([0.9, 0.7, 0.5], dtype=torch.float64)
    cameras = sample_cameras(6, CameraOptions(elevation_range=[-80.0, 80.0]), torch.Generator().manual_seed(3))
    origins, directions = camera_rays(cameras, 24, 24)
    t = ray_hits(kind, size, origins, directions)
    hit = torch.isfinite(t)
    assert 0.05 < hit.float().mean() < 0.9
    scale = canonical_scale(kind, size)
    points = (origins.double() + t.clamp(max=10)[..., None] * directions.double()) / scale
    assert implicit(kind, points[hit]).abs().max() < 1e-6
    fractions = torch.linspace(0, 1, 400, dtype=torch.float64)[:-1]
    reach = torch.where(hit, t, torch.full_like(t, 4.0))
    along = (reach[..., None] * fractions)[..., None]
    before = origins.double()[..., None, :] + along * directions.double()[..., None, :]
    assert (implicit(kind, before / scale) > -1e-9).all()


def test_hand_computed_rays():
    origin = torch.tensor([[0.0, 0.0, 2.0]])
    down = torch.tensor([[0.0, 0.0, -1.0]])
    size = torch.tensor([0.8, 0.6, 0.4])
    assert ray_hits("box", size, origin, down).item() == pytest.approx(1.8)
    assert ray_hits("ellipsoid", size, origin, down).item() == pytest.approx(1.8)
    assert ray_hits("cylinder", size, origin, down).item() == pytest.approx(1.8)
    assert math.isinf(ray_hits("torus", size, origin, down).item())               # straight down the hole
    ring = torch.tensor([[0.4 * (1 - TORUS_TUBE), 0.0, 2.0]])                      # down the middle of the tube
    assert ray_hits("torus", torch.tensor([0.8, 0.8, 0.4]), ring, down).item() == pytest.approx(1.8, abs=1e-6)
    side = torch.tensor([[2.0, 0.0, 0.0]])
    assert ray_hits("torus", torch.tensor([1.0, 0.8, 0.4]), side, -side / 2).item() == pytest.approx(1.5, abs=1e-6)


def test_a_view_is_the_colour_on_white():
    spec = ShapeSpec(**DEFAULT_SHAPES[0])
    cameras = sample_cameras(2, CameraOptions(), torch.Generator().manual_seed(0))
    rgb, silhouette, depth = render_shape(spec, cameras, 16)
    assert rgb.shape == (2, 3, 16, 16) and silhouette.any() and (~silhouette).any()
    on = rgb.permute(0, 2, 3, 1)[silhouette]
    torch.testing.assert_close(on, torch.tensor(spec.color).expand_as(on))
    assert (rgb.permute(0, 2, 3, 1)[~silhouette] == 1).all() and torch.isinf(depth[~silhouette]).all()


@pytest.mark.parametrize("shape,message", [
    ({"name": "a", "kind": "cone", "size": [0.5, 0.5, 0.5], "color": [1, 0, 0]}, r"shapes\[0\].kind: unknown"),
    ({"name": "a", "kind": "box", "size": [0.5, 0.5], "color": [1, 0, 0]}, r"shapes\[0\].size"),
    ({"name": "a", "kind": "box", "size": [1.5, 1.5, 1.5], "color": [1, 0, 0]}, r"shapes\[0\].size: the shape must"),
    ({"name": "a", "kind": "box", "size": [0.5, 0.5, 0.5], "color": [1, 0, 2]}, r"shapes\[0\].color"),
    ({"name": "a", "kind": "box", "size": [0.5, 0.5, 0.5]}, r"shapes\[0\]: needs name, kind, size and color"),
    ({"name": "a", "kind": "box", "size": [0.5, 0.5, 0.5], "color": [1, 0, 0], "label": 3}, r"shapes\[0\]: needs name"),
])
def test_bad_shapes_name_their_key(shape, message):
    with pytest.raises(ConfigError, match=message):
        ShapesOptions(shapes=[shape])


def test_unknown_shape_names_list_the_known_ones():
    with pytest.raises(ConfigError, match=r"modality\.shape: unknown shape 'cube'; this teacher's shapes: red_ball"):
        ShapesOptions().index("cube", "modality.shape")
