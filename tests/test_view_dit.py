"""The view teacher's subject is a class label or a text embedding, never both; a text teacher reads the text after
the six view columns and ignores the label; the ray map gives each token its pixels' Plücker rays, none for a
dropped camera."""

import math

import pytest
import torch

from potstill.backbones.cameras import look_at_origin
from potstill.backbones.view_dit import RayEmbedder, ViewDiT, ViewDiTOptions, view_condition


def small(**subject) -> ViewDiT:
    """A one-block view DiT whose output depends on its condition (its adaLN-zero layers drawn)."""
    model = ViewDiT(ViewDiTOptions(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=2,
                                   **subject))
    torch.nn.init.normal_(model.final_layer.linear.weight)
    torch.nn.init.normal_(model.final_layer.adaLN_modulation[-1].weight)
    return model


def cameras(n: int):
    return look_at_origin(torch.zeros(n), torch.zeros(n), torch.full((n,), 1.5), torch.full((n,), 0.8))


def test_a_subject_is_a_label_or_a_text_embedding():
    for num_classes, text_dim in ((3, 8), (0, 0)):
        with pytest.raises(ValueError, match="a view DiT's subject is a class label or a text embedding"):
            small(num_classes=num_classes, text_dim=text_dim)


def test_a_text_teacher_reads_the_text_and_not_the_label():
    model = small(num_classes=0, text_dim=8)
    with pytest.raises(ValueError, match=r"the condition must be a float tensor \[B, 14\]"):
        model(torch.randn(1, 3, 8, 8), torch.rand(1), view_condition(torch.zeros(1), cameras(1)))
    x, t = torch.randn(1, 3, 8, 8).expand(2, -1, -1, -1), torch.full((2,), 0.5)
    text = torch.randn(1, 8)
    same_text = model(x, t, view_condition(torch.tensor([0, 5]), cameras(2), text.expand(2, -1)))
    assert torch.allclose(same_text[0], same_text[1], atol=1e-4)
    other_text = model(x, t, view_condition(torch.zeros(2), cameras(2), torch.cat([text, -text])))
    assert not torch.allclose(other_text[0], other_text[1])
    null = model.null_condition(view_condition(torch.zeros(1), cameras(1), text))
    assert null.shape == (1, 14) and null.abs().sum() == 0


def test_the_ray_map_holds_each_pixels_plucker_ray():
    """Through a 2x2 image's four pixels around the centre of a camera looking at the origin: directions at the
    half-pixel angle off the axis, and moments o x d of norm |o| sin(angle), orthogonal to d."""
    embedder = RayEmbedder(image_size=2, patch=2, hidden=24)
    with torch.no_grad():
        embedder.proj.weight.copy_(torch.eye(24))
        embedder.proj.bias.zero_()
    camera = look_at_origin(torch.tensor([0.3]), torch.tensor([1.1]), torch.tensor([1.5]), torch.tensor([0.8]))
    rays = embedder(view_condition(torch.zeros(1), camera)).detach().reshape(4, 6)
    direction, moment = rays[:, :3], rays[:, 3:]
    axis = -camera.c2w[0, :3, 3] / 1.5
    off_axis = math.atan(math.sqrt(2) * 0.5 / (1 / math.tan(0.4)))
    torch.testing.assert_close(direction @ axis, torch.full((4,), math.cos(off_axis)), atol=1e-5, rtol=0)
    torch.testing.assert_close(moment.norm(dim=1), torch.full((4,), 1.5 * math.sin(off_axis)), atol=1e-5, rtol=0)
    torch.testing.assert_close((moment * direction).sum(1), torch.zeros(4), atol=1e-6, rtol=0)


def test_a_dropped_camera_gives_no_rays_and_the_ray_map_changes_the_output():
    model = small(num_classes=3, ray_map=True)
    cond = view_condition(torch.zeros(2, dtype=torch.long), look_at_origin(
        torch.zeros(2), torch.tensor([0.0, 1.0]), torch.full((2,), 1.5), torch.full((2,), 0.8)))
    with pytest.raises(ValueError, match=r"the condition must be a float tensor \[B, 6\]"):
        model(torch.randn(1, 3, 8, 8), torch.rand(1), None)
    rays = model.ray_embedder(model.null_condition(cond))
    torch.testing.assert_close(rays, model.ray_embedder.proj.bias.expand_as(rays))
    x, t = torch.randn(1, 3, 8, 8).expand(2, -1, -1, -1), torch.full((2,), 0.5)
    without = small(num_classes=3)
    without.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("ray_embedder")})
    assert not torch.allclose(model(x, t, cond), without(x, t, cond))
