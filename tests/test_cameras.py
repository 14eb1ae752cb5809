"""The random camera sampler follows threestudio's laws (elevation half uniform in degrees, half uniform on the
sphere; stratified azimuth; uniform distance and field of view), cameras look at the origin, rays go where a
pinhole sends them, and bad ranges name their key."""

import math
import re

import numpy as np
import pytest
import torch
from scipy import stats

from potstill.backbones.cameras import CameraOptions, camera_rays, look_at_origin, sample_cameras, turntable_cameras
from potstill.core.config import ConfigError, from_dict

OPTIONS = CameraOptions(elevation_range=[-10.0, 80.0], azimuth_range=[-180.0, 180.0], distance_range=[1.5, 2.0],
                        fovy_range=[40.0, 70.0])


def draws(batches: int, n: int):
    g = torch.Generator().manual_seed(0)
    return [sample_cameras(n, OPTIONS, g) for _ in range(batches)]


def test_elevation_is_half_uniform_in_degrees_half_uniform_on_the_sphere():
    elevation = np.array([float(c.elevation[0]) for c in draws(4000, 1)])
    low, high = (math.radians(v) for v in OPTIONS.elevation_range)

    def mixture_cdf(e):
        return 0.5 * (e - low) / (high - low) + 0.5 * (np.sin(e) - math.sin(low)) / (math.sin(high) - math.sin(low))

    assert stats.kstest(elevation, mixture_cdf).pvalue > 0.01
    assert stats.kstest(elevation, stats.uniform(low, high - low).cdf).pvalue < 1e-4    # the test can tell


def test_azimuths_are_stratified_and_distance_and_fovy_uniform():
    cameras = draws(300, 8)
    azimuth = torch.stack([c.azimuth for c in cameras]).rad2deg()
    slices = torch.arange(8) * 45.0 - 180.0
    assert ((azimuth >= slices - 1e-4) & (azimuth <= slices + 45.0 + 1e-4)).all()
    for name, (low, high), convert in (("distance", OPTIONS.distance_range, float),
                                       ("fovy", OPTIONS.fovy_range, math.degrees)):
        values = np.array([convert(v) for c in cameras for v in getattr(c, name)])
        assert stats.kstest(values, stats.uniform(low, high - low).cdf).pvalue > 0.01


def test_cameras_look_at_the_origin_with_z_up_and_an_orthonormal_frame():
    cameras = sample_cameras(64, OPTIONS, torch.Generator().manual_seed(1))
    rotation, position = cameras.c2w[:, :3, :3], cameras.c2w[:, :3, 3]
    torch.testing.assert_close(rotation.transpose(1, 2) @ rotation, torch.eye(3).expand(64, 3, 3), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(64), atol=1e-5, rtol=0)
    looking = -rotation[:, :, 2]
    torch.testing.assert_close(looking, -position / position.norm(dim=-1, keepdim=True), atol=1e-5, rtol=0)
    assert (rotation[:, 2, 1] >= -1e-6).all()                     # the image's up never points down
    torch.testing.assert_close(position.norm(dim=-1), cameras.distance)
    torch.testing.assert_close(torch.asin(position[:, 2] / cameras.distance), cameras.elevation, atol=1e-5, rtol=0)


def test_a_camera_straight_above_still_has_a_frame():
    cameras = look_at_origin(torch.tensor([math.pi / 2], dtype=torch.float64), torch.tensor([0.3],
                             dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64),
                             torch.tensor([0.8], dtype=torch.float64))
    rotation = cameras.c2w[0, :3, :3]
    assert torch.isfinite(rotation).all()
    torch.testing.assert_close(rotation.T @ rotation, torch.eye(3), atol=1e-5, rtol=0)


def test_rays_follow_the_pinhole_model():
    cameras = turntable_cameras(4, elevation_deg=30.0, distance=2.0, fovy_deg=60.0)
    origins, directions = camera_rays(cameras, 4, 6)
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(4, 4, 6))
    centre = directions[:, 1:3, 2:4].mean(dim=(1, 2))                      # the four pixels round the centre
    torch.testing.assert_close(torch.nn.functional.normalize(centre, dim=-1),
                               -origins[:, 0, 0] / origins[:, 0, 0].norm(dim=-1, keepdim=True), atol=1e-5, rtol=0)
    camera_dirs = torch.einsum("bji,bhwj->bhwi", cameras.c2w[:, :3, :3], directions)
    top_edge = camera_dirs[:, 0, :, 1] / -camera_dirs[:, 0, :, 2]          # tan of the angle above the axis
    torch.testing.assert_close(top_edge, torch.full_like(top_edge, 1.5 / 2 * math.tan(math.radians(30.0))),
                               atol=1e-5, rtol=0)
    assert (camera_dirs[:, :, 0, 0] < 0).all()                             # column 0 is on the left


def test_turntable_cameras_go_round_once():
    cameras = turntable_cameras(36)
    torch.testing.assert_close(cameras.azimuth[1] - cameras.azimuth[0], torch.tensor(math.radians(10.0)))
    assert len(cameras) == 36


@pytest.mark.parametrize("key,value,message", [
    ("elevation_range", [-100.0, 10.0], "inside [-90, 90] degrees"),
    ("azimuth_range", [10.0, -10.0], "with low <= high"),
    ("distance_range", [0.0, 1.0], "with 0 < low <= high"),
    ("fovy_range", [40.0, 190.0], "inside (0, 180) degrees"),
    ("fovy_range", [40.0], "[low, high]"),
])
def test_bad_camera_ranges_name_their_key(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(f"real_data.cameras.{key}: must be ") + ".*" + re.escape(message)):
        from_dict(CameraOptions, {key: value}, "real_data.cameras")
