"""A text-conditioned view teacher: `train-teacher` embeds each shape's caption with the config's open_clip tower (a
tiny random one here) and records the tower in the teacher file; `potstill distill --prompt` distils the prompt's
subject, scored against the shape whose caption it is; a prompt no shape has runs unscored; a prompt for a teacher
without text, or with a shape as well, is refused naming the key."""

import json

import pytest
import torch
from test_text_conditioning import TEXT_ENCODER, TOWER, tiny_encoder
from test_text_to_3d_modality import view_teacher
from test_text_to_3d_runs import QUICK, T3D

from potstill.cli import main
from potstill.core.config import ConfigError, load_config
from potstill.core.distiller import Distiller
from potstill.core.teacher_file import build_trained_denoiser, read_teacher_file
from potstill.modalities.text_to_3d import TextTo3DModality, TextTo3DOptions


@pytest.fixture(scope="module")
def text_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("text_teacher") / "T"
    main(["train-teacher", str(T3D / "shapes_text_teacher.yaml"), "--out", str(out), "--set", "train.steps=3",
          "train.batch_size=4", "train.progress=false", "train.checkpoint_every=0", "train.log_every=1",
          "backbone.depth=1", "backbone.hidden_size=32", "backbone.num_heads=2", "real_data.image_size=16",
          f"text_encoder={json.dumps(TEXT_ENCODER)}"])
    return out / "teacher.safetensors"


def test_the_teacher_file_records_its_text_tower_and_width(text_teacher):
    _, meta = read_teacher_file(str(text_teacher))
    assert meta["text_encoder"]["model_overrides"] == TOWER
    assert meta["backbone_options"]["text_dim"] == TOWER["embed_dim"] and meta["backbone_options"]["num_classes"] == 0


def test_a_prompt_is_distilled_and_scored_against_the_shape_it_names(text_teacher, tmp_path):
    run = tmp_path / "ring"
    main(["distill", str(T3D / "shapes_cfd.yaml"), "--out", str(run), "--set", f"teacher.checkpoint={text_teacher}",
          *QUICK, "--prompt", "blue ring"])
    report = json.loads((run / "report.json").read_text())["student"]
    assert {"f_score", "silhouette_iou", "surface_colour_error"} <= set(report)
    config = load_config(run / "config.yaml", ["train.progress=false"])
    modality = Distiller(config, with_real_data=False).modality
    assert modality.spec.name == "blue_ring"
    _, cond = modality.draw_inputs(3, torch.Generator().manual_seed(0))
    caption = tiny_encoder().encode(["blue ring"])
    assert cond.shape == (3, 6 + TOWER["embed_dim"]) and torch.allclose(cond[:, 6:], caption.expand(3, -1))


def test_a_prompt_no_shape_has_is_distilled_without_shape_scores(text_teacher, tmp_path):
    run = tmp_path / "cone"
    main(["distill", str(T3D / "shapes_sds.yaml"), "--out", str(run), "--set", f"teacher.checkpoint={text_teacher}",
          *QUICK, "--prompt", "a purple cone"])
    report = json.loads((run / "report.json").read_text())["student"]
    assert "f_score" not in report and "view_error" not in report


def test_a_prompt_needs_a_text_teacher_and_no_shape_beside_it(text_teacher):
    with pytest.raises(ConfigError, match=r"modality\.prompt: this teacher is conditioned on shape labels, not "
                                          r"text; name its subject with modality\.shape \(one of red_ball"):
        TextTo3DModality(TextTo3DOptions(prompt="red ball"), view_teacher())
    gaussian = load_config(T3D / "gaussian_identity_sds.yaml", ["modality.prompt=red ball"])
    with pytest.raises(ConfigError, match=r"modality\.prompt: the Gaussian teacher is unconditional"):
        Distiller(gaussian, with_real_data=False)
    both = load_config(T3D / "shapes_cfd.yaml", [f"teacher.checkpoint={text_teacher}", "modality.shape=red_ball",
                                                "modality.prompt=red ball"])
    with pytest.raises(ConfigError, match=r"modality\.shape, modality\.prompt: name the subject one way"):
        Distiller(both, with_real_data=False)
    narrow = tiny_encoder(model_overrides={**TOWER, "embed_dim": 8})
    with pytest.raises(ConfigError, match=r"text_encoder: the teacher takes text embeddings of width 16, this text "
                                          r"encoder makes 8"):
        TextTo3DModality(TextTo3DOptions(shape="red_ball"), build_trained_denoiser(str(text_teacher)), narrow)
