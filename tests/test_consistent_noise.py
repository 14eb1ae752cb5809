"""CFD's multi-view consistent noise on an exactly cast sphere: N(0, 1) marginals, pixels of one view built from
disjoint texels (so independent), one camera always the same noise, views 5 degrees apart strongly correlated
where they see the same surface, and fresh noise mixed in as the anchor does."""

import math

import pytest
import torch
from scipy import stats

from potstill.backbones.cameras import camera_rays, look_at_origin
from potstill.core.config import ConfigError
from potstill.data.primitives import ray_hits
from potstill.modalities.consistent_noise import (
    ConsistentNoise,
    ConsistentNoiseOptions,
    claim_texels,
    corner_points,
    covered_texels,
    pixel_triangles,
)

SIZE = 32


def radians(value: float) -> torch.Tensor:
    return torch.tensor([math.radians(value)], dtype=torch.float64)


def sphere_view(azimuth: float, elevation: float = 20.0, size: int = SIZE):
    """A camera and its exact view of the ball of radius 0.5: (camera, surface points, opacity)."""
    camera = look_at_origin(radians(elevation), radians(azimuth), torch.tensor([1.75], dtype=torch.float64),
                            radians(50.0))
    origins, directions = camera_rays(camera, size, size)
    t = ray_hits("ellipsoid", torch.tensor([1.0, 1.0, 1.0]), origins, directions)
    hit = torch.isfinite(t)
    surface = (origins + torch.where(hit, t, 0)[..., None] * directions).float()
    return camera, surface, hit.float()


def pixel_of(camera, points: torch.Tensor, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of the pixel each world point [N, 3] falls in (pinhole projection written out here)."""
    rotation, position = camera.c2w[0, :3, :3], camera.c2w[0, :3, 3]
    local = (points - position) @ rotation
    focal = size / (2 * math.tan(float(camera.fovy[0]) / 2))
    column = local[:, 0] / -local[:, 2] * focal + size / 2
    row = -local[:, 1] / -local[:, 2] * focal + size / 2
    return row.floor().long(), column.floor().long()


def matched_correlation(noise: ConsistentNoise, first: float, second: float) -> float:
    """Correlation of the noise at pixels of two views that see the same point of the sphere."""
    _, surface_a, opacity_a = sphere_view(first)
    camera_b, surface_b, opacity_b = sphere_view(second)
    noise_a, seen_a = noise.consistent(surface_a, opacity_a)
    noise_b, seen_b = noise.consistent(surface_b, opacity_b)
    rows, cols = pixel_of(camera_b, surface_a[0][seen_a[0]])
    inside = (rows >= 0) & (rows < SIZE) & (cols >= 0) & (cols < SIZE)
    both = inside.clone()
    both[inside] = seen_b[0][rows[inside], cols[inside]]
    a = noise_a[0][:, seen_a[0]][:, both].flatten()
    b = noise_b[0][:, rows[both], cols[both]].flatten()
    assert len(a) > 600
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def test_marginals_are_standard_normal_and_the_background_is_the_fixed_noise():
    values = []
    for seed in range(4):
        noise = ConsistentNoise(ConsistentNoiseOptions(), 3, (SIZE, SIZE), 1.0, seed=seed)
        _, surface, opacity = sphere_view(40.0 * seed)
        sample, seen = noise.consistent(surface, opacity)
        values.append(sample[0][:, seen[0]].flatten())
        torch.testing.assert_close(sample[0][:, ~seen[0]], noise.background[:, ~seen[0]])
        assert seen[0].sum() > 250 and torch.equal(seen[0], opacity[0] > 0.5)
    assert stats.kstest(torch.cat(values).numpy(), "norm").pvalue > 0.01


def test_the_pixels_of_one_view_claim_disjoint_texels_and_views_claim_their_own():
    surfaces, opacities = zip(*(sphere_view(azimuth, elevation=35.0)[1:] for azimuth in (30.0, 31.0)), strict=True)
    options = ConsistentNoiseOptions()
    per_axis = 2 * options.layers * options.resolution**2
    triangles, owner = pixel_triangles(*corner_points(torch.cat(surfaces), torch.cat(opacities), 1,
                                                      options.opacity_threshold))
    for axis in range(3):
        covered = covered_texels(triangles, owner, axis, 1.0, options.resolution, options.layers)
        texel, pixel = claim_texels(*covered, SIZE * SIZE, per_axis)
        view = pixel // (SIZE * SIZE)
        for v in (0, 1):
            assert len(texel[view == v]) > 1000
            assert len(torch.unique(texel[view == v])) == len(texel[view == v])     # no texel serves two pixels
        shared = len(set(texel[view == 0].tolist()) & set(texel[view == 1].tolist()))
        assert shared > 0.5 * len(texel[view == 0])                # one degree apart the views share most texels
        dropped = len(torch.unique(torch.stack(covered), dim=1)[0]) - len(texel)
        assert dropped < 0.01 * len(texel)                          # folds are rare


def test_neighbouring_pixels_are_uncorrelated_and_one_camera_gives_one_noise():
    noise = ConsistentNoise(ConsistentNoiseOptions(), 3, (SIZE, SIZE), 1.0)
    _, surface, opacity = sphere_view(10.0)
    sample, seen = noise.consistent(surface, opacity)
    again, _ = noise.consistent(surface, opacity)
    assert torch.equal(sample, again)
    pairs = seen[0, :, :-1] & seen[0, :, 1:]
    left, right = sample[0, :, :, :-1][:, pairs], sample[0, :, :, 1:][:, pairs]
    r = torch.corrcoef(torch.stack([left.flatten(), right.flatten()]))[0, 1]
    assert abs(float(r)) < 4 / math.sqrt(left.numel())


def test_views_five_degrees_apart_get_strongly_correlated_noise():
    noise = ConsistentNoise(ConsistentNoiseOptions(), 3, (SIZE, SIZE), 1.0)
    assert matched_correlation(noise, 0.0, 5.0) > 0.5
    fresh = ConsistentNoise(ConsistentNoiseOptions(sqrt_beta=0.0), 3, (SIZE, SIZE), 1.0)
    _, surface, opacity = sphere_view(0.0)
    other = torch.randn(1, 3, SIZE, SIZE)
    assert torch.equal(fresh(surface, opacity, other), other)
    with pytest.raises(ValueError, match="mixes in fresh noise"):
        fresh(surface, opacity)


def test_the_mix_and_the_refresh_keep_unit_variance():
    options = ConsistentNoiseOptions(sqrt_beta=0.6, refresh=0.3, resolution=32, layers=2)
    noise = ConsistentNoise(options, 4, (SIZE, SIZE), 1.0)
    _, surface, opacity = sphere_view(0.0)
    consistent, _ = noise.consistent(surface, opacity)
    mixed = noise(surface, opacity, torch.randn(consistent.shape, generator=torch.Generator().manual_seed(1)))
    r = torch.corrcoef(torch.stack([consistent.flatten(), mixed.flatten()]))[0, 1]
    assert float(r) == pytest.approx(0.6, abs=0.05)
    assert float(mixed.std()) == pytest.approx(1.0, abs=0.05)
    before = noise.texels.clone()
    noise.refresh(torch.Generator().manual_seed(2))
    r = torch.corrcoef(torch.stack([before.flatten(), noise.texels.flatten()]))[0, 1]
    assert float(r) == pytest.approx(math.sqrt(0.7), abs=0.01)
    assert float(noise.texels.std()) == pytest.approx(1.0, abs=0.01)


def test_a_render_size_that_is_no_multiple_of_the_noise_is_refused():
    noise = ConsistentNoise(ConsistentNoiseOptions(), 3, (24, 24), 1.0)
    _, surface, opacity = sphere_view(0.0)
    with pytest.raises(ConfigError, match="render size 32x32 must be the same whole multiple of the noise"):
        noise.consistent(surface, opacity)


def test_a_coarser_noise_pools_the_render():
    noise = ConsistentNoise(ConsistentNoiseOptions(), 3, (16, 16), 1.0)
    _, surface, opacity = sphere_view(0.0, size=64)
    sample, seen = noise.consistent(surface, opacity)
    assert sample.shape == (1, 3, 16, 16) and 40 < int(seen.sum()) < 200
    assert stats.kstest(sample[0][:, seen[0]].flatten().numpy(), "norm").pvalue > 0.001
