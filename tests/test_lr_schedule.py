"""Learning-rate schedules from the config: the shape at its ends, and every distillation optimizer stepping at
its part's scheduled rate (the teacher trainer reads the same function)."""

import math

import pytest

from potstill.core.config import ConfigError
from potstill.core.distiller import Distiller
from potstill.core.lr_schedule import scheduled_lr
from potstill.core.teacher_config import TeacherTrainConfig
from tests_support import make_config


def test_warmup_then_decay_to_the_final_fraction():
    assert [scheduled_lr(1.0, s, 10, warmup_steps=4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert scheduled_lr(2.0, 0, 100, decay="cosine", final_lr_fraction=0.1) == 2.0
    assert scheduled_lr(2.0, 50, 100, decay="cosine", final_lr_fraction=0.1) == pytest.approx(2.0 * 0.55)
    assert scheduled_lr(2.0, 100, 100, decay="cosine", final_lr_fraction=0.1) == pytest.approx(0.2)
    assert scheduled_lr(2.0, 25, 100, decay="linear", final_lr_fraction=0.0) == pytest.approx(1.5)
    assert scheduled_lr(1.0, 1, 10, warmup_steps=4, decay="cosine", final_lr_fraction=0.0) == \
        pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 0.1)))
    stable_then_decay = [scheduled_lr(1.0, s, 10, decay="linear", final_lr_fraction=0.2, decay_start=0.6)
                         for s in (0, 6, 8, 10)]
    assert stable_then_decay == pytest.approx([1.0, 1.0, 0.6, 0.2])
    teacher = TeacherTrainConfig(steps=100, lr=1e-3, warmup_steps=10, decay="cosine", final_lr_fraction=0.05)
    assert teacher.lr_at(37) == scheduled_lr(1e-3, 37, 100, 10, "cosine", 0.05)


def test_each_optimizer_steps_at_its_parts_scheduled_rate(monkeypatch):
    """A generator on a cosine decay and a fake score at a constant rate: at every optimizer step the groups hold
    the rates the schedule gives for that step."""
    config = make_config(fake_score={"kind": "mlp"},
                         train={"steps": 6, "batch_size": 16, "progress": False, "log_every": 1},
                         optim={"generator": {"lr": 1e-2, "decay": "cosine", "final_lr_fraction": 0.1,
                                              "warmup_steps": 2},
                                "fake_score": {"lr": 1e-3}})
    run = Distiller(config)
    seen = []
    step = run.engine.step

    def recording(trainable):
        seen.append((run.step, trainable.name, [g["lr"] for g in run.engine.optimizer_groups(trainable)]))
        return step(trainable)

    monkeypatch.setattr(run.engine, "step", recording)
    run.train()
    generator = [(s, lrs[0]) for s, name, lrs in seen if name == "generator"]
    assert [s for s, _ in generator] == list(range(6))
    for s, lr in generator:
        assert lr == pytest.approx(scheduled_lr(1e-2, s, 6, 2, "cosine", 0.1))
    critic = [lrs for _, name, lrs in seen if name == "critic"]
    assert len(critic) == 6 and all(lrs == [1e-3] for lrs in critic)


def test_bad_schedules_are_named():
    with pytest.raises(ConfigError, match=r"optim\.generator\.final_lr_fraction"):
        make_config(optim={"generator": {"final_lr_fraction": 1.5}})
    with pytest.raises(ConfigError, match=r"optim\.generator\.decay_start"):
        make_config(optim={"generator": {"decay_start": 1.0}})
    with pytest.raises(ConfigError, match=r"optim\.fake_score\.decay"):
        make_config(optim={"fake_score": {"decay": "exponential"}})
