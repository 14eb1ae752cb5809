"""Config loading: inheritance, overrides, and errors that name the key and list the choices."""

import pytest

from potstill.core.config import ConfigError, load_config, read_yaml, to_dict
from tests_support import CONFIGS


def test_extends_and_overrides_reach_typed_options():
    cfg = load_config(CONFIGS / "vector" / "gmm_sid.yaml",
                      ["teacher.means=[[0,0],[2,2]]", "teacher.stds=[0.5,[0.2,0.4]]", "teacher.weights=[1,3]",
                       "optim.generator.lr=1e-3", "objective.alpha=1"])
    assert cfg.objective.kind == "sid"
    assert cfg.objective.options.alpha == 1.0 and isinstance(cfg.objective.options.alpha, float)
    assert cfg.teacher.options.means == [[0, 0], [2, 2]]
    assert cfg.teacher.options.stds == [0.5, [0.2, 0.4]]
    assert cfg.optim.generator.lr == 1e-3
    assert cfg.train.generator_every == 1            # from gmm_sid.yaml
    assert cfg.fake_score.kind == "mlp"              # inherited from gmm_base.yaml


def test_round_trip_through_to_dict():
    cfg = load_config(CONFIGS / "vector" / "gmm_dmd2.yaml")
    assert load_config(data=to_dict(cfg)) == cfg


@pytest.mark.parametrize(("override", "message"), [
    (["train.stpes=3"], "train.stpes: unknown key; valid keys here: activation_checkpointing, batch_size"),
    (["train.steps=many"], "train.steps: expected an integer, got 'many'"),
    (["objective.kind=dmd3"],
     "objective.kind: unknown objective 'dmd3'; valid choices: add, apt, arc, cd, cfd, dmd, dmd2, fdistill, ladd, "
     "meanflow, ode_regression, scm, sds, sid, sida, sim, uni_instruct, vsd"),
    (["objective.alpha=1.2"], "objective.alpha: unknown key; valid keys here:"),
    (["teacher.means=3"], "teacher.means: expected a list, got 3"),
    (["optim.generator.lr=[1]"], "optim.generator.lr: expected a number"),
    (["generator.kind=unet"],
     "generator.kind: unknown generator 'unet'; valid choices: causal_rollout, consistency, denoiser, field, gaussian, "
     "meanflow, mlp"),
    (["train.steps"], "expected key=value"),
    (["engine.kind=deepspeed", "engine.host_mmap_threshold_mib=0"],
     "engine.host_mmap_threshold_mib: must be at least 1, got 0"),
])
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(CONFIGS / "vector" / "gmm_dmd2.yaml", override)


def test_missing_required_section():
    with pytest.raises(ConfigError, match="objective: required key is missing"):
        load_config(data={"modality": "vector", "teacher": "gmm", "generator": "mlp", "fake_score": "mlp"})


def test_extends_cycle_and_missing_file(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_a_key_given_twice_names_the_file_line_and_key(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  steps: 3\n  batch_size: 8\n  steps: 300000\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\n")
    for name in ("base.yaml", "child.yaml"):
        with pytest.raises(ConfigError) as error:
            load_config(tmp_path / name)
        assert str(error.value) == f"{tmp_path / 'base.yaml'}:4:3: duplicate key 'steps' (first given on line 2)"
    with pytest.raises(ConfigError, match=r"^train: cannot parse .* as YAML: duplicate key 'steps'"):
        load_config(CONFIGS / "vector" / "gmm_dmd2.yaml", ["train={steps: 3, steps: 4}"])


def test_merge_keys_may_still_be_overridden(tmp_path):
    (tmp_path / "a.yaml").write_text(f"extends: {CONFIGS / 'vector' / 'gmm_dmd2.yaml'}\n"
                                     "optim:\n  generator: &fast {lr: 1.0e-3, grad_clip: 5.0}\n"
                                     "  fake_score:\n    <<: *fast\n    lr: 2.0e-3\n")
    cfg = load_config(tmp_path / "a.yaml")
    assert (cfg.optim.fake_score.lr, cfg.optim.fake_score.grad_clip, cfg.optim.generator.lr) == (2e-3, 5.0, 1e-3)


def test_a_yaml_syntax_error_is_one_line_with_its_place(tmp_path):
    (tmp_path / "bad.yaml").write_text("train:\n  steps: 3\n   batch_size: 8\n")
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path / "bad.yaml")
    assert str(error.value) == f"{tmp_path / 'bad.yaml'}:3:14: mapping values are not allowed here"
    with pytest.raises(ConfigError) as error:
        load_config(CONFIGS / "vector" / "gmm_dmd2.yaml", ["teacher.means=[[0, 0]"])
    assert str(error.value) == ("teacher.means: cannot parse '[[0, 0]' as YAML: expected ',' or ']', but got "
                                "'<stream end>' (while parsing a flow sequence) at column 8")


def test_every_shipped_yaml_file_reads_with_duplicates_refused():
    files = sorted(CONFIGS.rglob("*.yaml"))
    assert len(files) > 20
    for path in files:
        assert read_yaml(path), path
