"""The text_to_3d modality's scores measure the law: exact views score perfectly and views of the wrong thing do
not; a field that is the shape scores F-score and IoU near 1 against the analytic surface; consistent noise needs
a field; bad settings name their keys."""

import types

import pytest
import torch

from potstill.backbones.cameras import CameraOptions, sample_cameras
from potstill.backbones.fields import Field
from potstill.backbones.view_dit import condition_cameras, view_condition
from potstill.backbones.volume_renderer import RendererOptions
from potstill.core.config import ConfigError, from_dict
from potstill.core.generator import Generator
from potstill.data.shapes3d import DEFAULT_SHAPES, render_shape
from potstill.modalities.field_generator import FieldGenerator
from potstill.modalities.text_to_3d import TextTo3DModality, TextTo3DOptions

SIZE = 16


def view_teacher(shapes=DEFAULT_SHAPES):
    """What the modality reads of a shapes3d teacher: its sample shape and its file's data section."""
    data = {"kind": "shapes3d", "shapes": shapes, "image_size": SIZE, "cameras": {}}
    return types.SimpleNamespace(sample_shape=(3, SIZE, SIZE), metadata={"data": data})


def modality(**options) -> TextTo3DModality:
    return TextTo3DModality(from_dict(TextTo3DOptions, options, "modality"), view_teacher())


class ExactBall(Field):
    """The red ball's exact shape as a field: dense inside the sphere of diameter 0.9, empty outside, its colour."""

    def forward(self, points):
        inside = points.norm(dim=-1) < 0.45
        return torch.where(inside, 200.0, -200.0), torch.tensor(DEFAULT_SHAPES[0]["color"]).expand_as(points)


def test_exact_views_score_perfectly_and_other_shapes_do_not():
    m = modality(shape="red_ball")
    noise, cond = m.draw_inputs(8, torch.Generator().manual_seed(0))
    assert noise.shape == (8, 3, SIZE, SIZE) and cond.shape == (8, 6) and (cond[:, 0] == 0).all()
    cameras = condition_cameras(cond)
    exact = render_shape(m.spec, cameras, SIZE)[0]
    perfect = m.evaluate(exact * 2 - 1, cond)
    assert perfect == {"view_error": pytest.approx(0.0, abs=1e-6), "silhouette_iou": 1.0,
                       "colour_error": pytest.approx(0.0, abs=1e-6)}
    box = m.shapes.specs[1]
    wrong = m.evaluate(render_shape(box, cameras, SIZE)[0] * 2 - 1, cond)
    assert wrong["silhouette_iou"] < 0.8 and wrong["colour_error"] > 0.3 and wrong["view_error"] > 0.02
    blank = m.evaluate(torch.ones(8, 3, SIZE, SIZE), cond)
    assert blank["silhouette_iou"] == 0.0


def test_a_field_that_is_the_shape_scores_near_one_against_the_analytic_surface():
    m = modality(shape="red_ball", eval_cameras=8, eval_image_size=32)
    exact = FieldGenerator(ExactBall(), RendererOptions(samples=256, blob_scale=0.0), SIZE)
    scores = m.generator_metrics(exact)
    assert scores["f_score"] > 0.97 and scores["field_iou"] > 0.95 and scores["surface_colour_error"] < 1e-6
    assert scores["chamfer"] < 0.01
    smaller = m.generator_metrics(FieldGenerator(ExactBall(), RendererOptions(samples=256, blob_scale=0.0,
                                                                              radius=1.4), SIZE))
    assert smaller["f_score"] < 0.5 and smaller["field_iou"] < 0.8      # the same field over a larger scene


class PaintedAir(ExactBall):
    """The exact ball in a field whose empty space is painted blue, as a fitted voxel grid's unconstrained voxels
    are: no view shows the paint."""

    def forward(self, points):
        density, colour = super().forward(points)
        return density, torch.where(density[..., None] > 0, colour, torch.tensor([0.1, 0.2, 0.9]))


def test_the_surface_colour_is_what_the_rays_show_not_the_field_at_the_point():
    """The cloud's colours are the views' (background taken out): paint in empty space, which trilinear lookup at
    the half-opacity point would mix in, does not reach them; on a grey background as on white."""
    for background in ([1.0, 1.0, 1.0], [0.5, 0.5, 0.5]):
        renderer = RendererOptions(samples=64, blob_scale=0.0, background=background)
        generator = FieldGenerator(PaintedAir(), renderer, SIZE)
        rendered = generator.render_views(condition_cameras(modality(shape="red_ball").draw_inputs(4)[1]), 32)
        _, colours = generator.surface_cloud(rendered)
        torch.testing.assert_close(colours, torch.tensor(DEFAULT_SHAPES[0]["color"]).expand_as(colours),
                                   rtol=0, atol=1e-4)


def test_views_are_rendered_from_the_cameras_in_the_conditions():
    cameras = sample_cameras(3, CameraOptions(), torch.Generator().manual_seed(4))
    generator = FieldGenerator(ExactBall(), RendererOptions(samples=256, blob_scale=0.0), SIZE).eval()
    views = generator(torch.zeros(3, 3, SIZE, SIZE), view_condition(torch.zeros(3), cameras))
    exact, silhouette, _ = render_shape(types.SimpleNamespace(kind="ellipsoid", size=[0.9] * 3,
                                                              color=DEFAULT_SHAPES[0]["color"]), cameras, SIZE)
    inside = silhouette[:, None].expand_as(views)
    assert ((views + 1) / 2 - exact).abs()[inside].median() < 1e-3
    assert generator.last_render.surface.shape == (3, SIZE, SIZE, 3)


def test_a_shape_must_be_named_when_the_teacher_knows_several():
    with pytest.raises(ConfigError, match=r"modality\.shape: this teacher knows 4 shapes; name one of red_ball"):
        modality()
    with pytest.raises(ConfigError, match=r"modality\.shape: unknown shape 'cone'"):
        modality(shape="cone")
    single = TextTo3DModality(TextTo3DOptions(), view_teacher(DEFAULT_SHAPES[2:3]))
    assert single.spec.name == "blue_ring"


def test_a_teacher_of_other_data_is_refused():
    teacher = types.SimpleNamespace(sample_shape=(3, SIZE, SIZE), metadata={"data": {"kind": "digits"}})
    with pytest.raises(ConfigError, match="teacher: the text_to_3d modality needs a view teacher"):
        TextTo3DModality(TextTo3DOptions(shape="red_ball"), teacher)


def test_consistent_noise_needs_a_field_that_renders_depth():
    m = modality(shape="red_ball", noise="consistent")
    with pytest.raises(ConfigError, match=r"modality\.noise: consistent noise is built from the depth a field renders"):
        m.noise_source(Generator())
    assert modality(shape="red_ball").noise_source(Generator()) is None


def test_eval_settings_name_their_key():
    with pytest.raises(ConfigError, match=r"modality\.f_score_threshold: must be greater than 0"):
        modality(shape="red_ball", f_score_threshold=0.0)


def test_the_opacity_penalties_are_entropy_and_sparsity_of_the_training_views():
    cameras = sample_cameras(2, CameraOptions(), torch.Generator().manual_seed(5))
    generator = FieldGenerator(ExactBall(), RendererOptions(samples=64, blob_scale=0.0), SIZE, opacity_entropy=0.3,
                               opacity_sparsity=0.7)
    assert generator.penalty() is None
    generator(torch.zeros(2, 3, SIZE, SIZE), view_condition(torch.zeros(2), cameras))
    o = generator.last_render.opacity.clamp(1e-5, 1 - 1e-5)
    entropy = -(o * o.log() + (1 - o) * (1 - o).log())
    expected = (0.3 * entropy.sum() + 0.7 * (o**2 + 0.01).sqrt().sum()) / 2
    torch.testing.assert_close(generator.penalty(), expected)
    assert generator.penalty() is None                      # one penalty per training forward
    with torch.no_grad():
        generator(torch.zeros(2, 3, SIZE, SIZE), view_condition(torch.zeros(2), cameras))
    assert generator.penalty() is None                      # none for the critic's no-grad forward
