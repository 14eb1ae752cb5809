"""`potstill train-teacher`: a tiny DiT trained on the digits writes a teacher file that `teacher.kind: trained`
(and `dit`) rebuild exactly; a stopped run resumes to the same losses and weights; runs, configs and files that
do not fit are refused with errors naming the key."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from potstill import cli
from potstill.core.config import ConfigError
from potstill.core.engine import NonFiniteError
from potstill.core.registry import TEACHERS
from potstill.core.run_log import read_log
from potstill.core.teacher_config import load_teacher_config
from potstill.core.teacher_file import build_trained_denoiser, read_teacher_file, write_teacher_file
from potstill.core.teacher_training import TeacherTrainer, train_teacher
from potstill.modalities.image import DiTTeacherOptions, build_dit_denoiser
from tests_support import CONFIGS

TINY_DIT = {"kind": "dit", "input_size": 8, "patch_size": 4, "in_channels": 1, "hidden_size": 16, "depth": 1,
            "num_heads": 2, "num_classes": 10, "learn_sigma": False}
TINY = {"backbone": TINY_DIT, "schedule": "edm", "prediction": "edm", "sigma_data": 0.75, "real_data": "digits",
        "train": {"steps": 6, "batch_size": 8, "warmup_steps": 2, "decay": "linear", "log_every": 1,
                  "checkpoint_every": 3, "progress": False, "device": "cpu"}}


def tiny_config(*overrides: str):
    return load_teacher_config(data=TINY, overrides=["schedule.sigma_data=0.75", *overrides])


def probe(denoiser) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=generator)
    with torch.no_grad():
        return denoiser(x, torch.tensor([0.1, 1.0, 5.0, 40.0]), torch.tensor([0, 3, 7, 10]))


def losses(run_dir) -> list[dict]:
    rows = read_log(run_dir / "logs" / "metrics.jsonl")
    return [{k: v for k, v in row.items() if k != "sec_per_step"} for row in rows]


def test_teacher_file_rebuilds_the_trained_ema_model(tmp_path):
    trainer = TeacherTrainer(tiny_config("train.checkpoint_every=0"), tmp_path)
    trainer.train()
    path = trainer.write_teacher()
    _, meta = read_teacher_file(str(path))
    assert meta == json.loads(json.dumps(trainer.metadata()))
    assert meta["sample_shape"] == [1, 8, 8] and meta["num_classes"] == 10 and meta["trained_steps"] == 6
    assert meta["data"] == {"kind": "digits", "conditional": True}
    assert meta["schedule"] == "edm" and meta["schedule_options"]["sigma_data"] == 0.75
    expected = probe(trainer.ema.model)
    trained = TEACHERS.get("trained").builder(TEACHERS.get("trained").options(str(path)), None)
    assert trained.metadata == meta and trained.sample_shape == (1, 8, 8)
    torch.testing.assert_close(probe(trained), expected, rtol=0, atol=0)
    dit = build_dit_denoiser(DiTTeacherOptions(checkpoint=str(path)))
    torch.testing.assert_close(probe(dit), expected, rtol=0, atol=0)
    assert not torch.equal(probe(trainer.model), expected)      # the file holds the EMA, not the online weights


def test_stopped_run_resumes_to_the_same_losses_and_weights(tmp_path):
    config = tiny_config()
    train_teacher(config, tmp_path / "whole")
    stopped = TeacherTrainer(config, tmp_path / "split")
    stopped.train(steps=4)               # a checkpoint at step 3; step 4 is lost
    del stopped
    train_teacher(config, tmp_path / "split", resume=True)
    assert [row["step"] for row in losses(tmp_path / "split")] == list(range(1, 7))
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")
    whole, split = (load_file(tmp_path / run / "teacher.safetensors") for run in ("whole", "split"))
    for name, value in whole.items():
        torch.testing.assert_close(split[name], value, rtol=0, atol=0)


def test_existing_run_and_changed_config_are_refused(tmp_path):
    train_teacher(tiny_config("train.steps=2"), tmp_path)
    with pytest.raises(FileExistsError, match="already holds a teacher run; pass --resume"):
        train_teacher(tiny_config("train.steps=2"), tmp_path)
    with pytest.raises(ConfigError, match=r"train.lr: 0.001 -> 0.01"):
        train_teacher(tiny_config("train.steps=3", "train.lr=0.01"), tmp_path, resume=True)
    with pytest.raises(FileNotFoundError, match="has no checkpoint"):
        train_teacher(tiny_config(), tmp_path / "fresh", resume=True)


def test_wrong_architecture_and_foreign_files_name_the_key(tmp_path):
    trainer = TeacherTrainer(tiny_config(), tmp_path)
    meta = trainer.metadata() | {"sample_shape": [1, 8, 8]}
    deeper = tmp_path / "deeper.safetensors"
    write_teacher_file(deeper, trainer.model.backbone.state_dict(),
                       meta | {"backbone_options": meta["backbone_options"] | {"depth": 2}})
    with pytest.raises(ValueError, match=r"^teacher.checkpoint: .* does not match the dit configuration "
                                         r"\(\d+ keys missing: blocks.1."):
        build_trained_denoiser(str(deeper))
    with pytest.raises(ValueError, match=r"teacher.checkpoint: .* is not a potstill teacher file"):
        build_trained_denoiser("embedded:digits_teacher")
    with pytest.raises(FileNotFoundError, match=r"teacher.checkpoint: .* does not exist"):
        build_trained_denoiser(str(tmp_path / "none.safetensors"))
    with pytest.raises(ValueError, match=r"teacher.checkpoint: unknown embedded weights"):
        build_trained_denoiser("embedded:nothing")


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"backbone.depths: unknown key"):
        tiny_config("backbone.depths=2")
    with pytest.raises(ConfigError, match=r"schedule.kind: unknown schedule 'edn'"):
        tiny_config("schedule.kind=edn")
    with pytest.raises(ConfigError, match=r"train.decay: 'step' is not one of"):
        tiny_config("train.decay=step")
    with pytest.raises(ConfigError, match="label_dropout: must be in"):
        tiny_config("label_dropout=1.5")
    with pytest.raises(ValueError, match="label_dropout: the backbone has no null class"):
        TeacherTrainer(tiny_config("backbone.class_dropout_prob=0"), tmp_path)
    counted = {**TINY, "backbone": {"kind": "dit1d", "num_classes": None}, "schedule": "flow", "prediction": "flow"}
    with pytest.raises(ValueError, match=r"backbone\.num_classes: null takes the class count from the data"):
        TeacherTrainer(load_teacher_config(data=counted), tmp_path / "counted")


def test_nonfinite_loss_stops_naming_the_step(tmp_path):
    trainer = TeacherTrainer(tiny_config(), tmp_path)
    trainer.train(steps=2)
    images, labels = trainer.real_data.next(8)
    trainer.real_data.next = lambda n: (torch.full_like(images, float("nan")), labels)
    with pytest.raises(NonFiniteError, match="teacher loss is nan at step 3"):
        trainer.train()


def test_command_trains_refuses_and_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    small = [f"backbone.{k}={v}" for k, v in TINY_DIT.items() if k != "kind"]
    args = ["train-teacher", str(CONFIGS / "image" / "digits_teacher.yaml"), "--out", str(run), "--set", *small,
            "train.batch_size=8", "train.progress=false", "train.device=cpu"]
    cli.main([*args, "train.steps=2"])
    assert f"teacher file: {run / 'teacher.safetensors'}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        cli.main([*args, "train.steps=2"])
    assert stop.value.code == 2 and "already holds a teacher run" in capsys.readouterr().err
    cli.main([*args, "train.steps=3", "--resume"])
    with safe_open(str(run / "teacher.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["potstill"])["trained_steps"] == 3
    with pytest.raises(SystemExit) as stop:
        cli.main([*args, "train.lr=-1"])
    assert stop.value.code == 2 and "train.lr: must be greater than 0" in capsys.readouterr().err
