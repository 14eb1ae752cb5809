"""Every text-to-3D config runs end to end: a tiny view teacher trained by `potstill train-teacher` on shapes3d,
SDS, VSD and CFD into a voxel grid and an MLP field, CFD on the views themselves (the identity field),
`potstill eval` with the 3-D scores, `potstill export` of a PLY (read back by an independent parser) and a
turntable; the errors name their key."""

import pytest
from test_ply import read_ply

from potstill.cli import main
from tests_support import CONFIGS

T3D = CONFIGS / "text_to_3d"
QUICK = ["train.steps=2", "train.batch_size=2", "train.log_every=1", "train.progress=false", "eval.n_samples=2",
         "eval.batch_size=2", "train.checkpoint_every=0", "train.sample_every=0", "generator.field.resolution=8",
         "generator.renderer.samples=8", "modality.eval_cameras=2", "modality.eval_image_size=8",
         "modality.consistent_noise.resolution=16"]


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "T"
    main(["train-teacher", str(T3D / "shapes_teacher.yaml"), "--out", str(out), "--set", "train.steps=3",
          "train.batch_size=4", "train.progress=false", "train.checkpoint_every=0", "train.log_every=1",
          "backbone.depth=1", "backbone.hidden_size=32", "backbone.num_heads=2", "real_data.image_size=16"])
    return out / "teacher.safetensors"


def distill(name, out, teacher, *extra):
    main(["distill", str(T3D / f"shapes_{name}.yaml"), "--out", str(out), "--set", f"teacher.checkpoint={teacher}",
          "modality.shape=blue_ring", *QUICK, *extra])
    return out


def test_every_shapes_config_runs_evaluates_and_exports(tiny_teacher, tmp_path, capsys):
    for name in ("sds", "vsd", "cfd"):
        distill(name, tmp_path / name, tiny_teacher)
    distill("cfd", tmp_path / "mlp", tiny_teacher, "generator.field={kind: mlp_field, width: 16}",
            "modality.consistent_noise.sqrt_beta=0.5", "modality.consistent_noise.refresh=0.01")
    distill("cfd", tmp_path / "images", tiny_teacher, "generator.field={kind: identity, count: 4}")   # CFD's 2-D check
    capsys.readouterr()
    main(["eval", str(tmp_path / "cfd"), "--n", "2"])
    printed = capsys.readouterr().out
    for key in ("view_error", "silhouette_iou", "f_score", "chamfer", "field_iou", "surface_colour_error"):
        assert f'"{key}"' in printed
    ply, turntable = tmp_path / "out.ply", tmp_path / "turn.png"
    main(["export", str(tmp_path / "cfd"), "--ply", str(ply), "--turntable", str(turntable), "--frames", "4",
          "--views", "3", "--size", "12"])
    records = read_ply(ply)
    assert len(records) > 0 and turntable.stat().st_size > 0


def test_the_errors_name_their_key(tiny_teacher, tmp_path, capsys):
    cases = [
        (["modality.shape=cone"], "modality.shape: unknown shape 'cone'"),
        (["generator.render_size=24"], "generator.render_size: 24 differs from the teacher's 16x16"),
        (["generator.render_size=24", "generator.resize=true"], "render size 24x24 must be the same whole multiple"),
        (["modality.cameras.elevation_range=[-100, 10]"], "modality.cameras.elevation_range: must be"),
        (["generator.field.kind=cube"], "generator.field.kind: unknown field 'cube'"),
        (["generator.renderer.blob_std=0.001", "generator.empty_patience=1"],
         "generator.field: the field has rendered nothing"),
    ]
    for overrides, message in cases:
        with pytest.raises(SystemExit):
            distill("cfd", tmp_path / "bad", tiny_teacher, *overrides)
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "missing"), "--ply", str(tmp_path / "x.ply")])
