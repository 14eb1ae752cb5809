"""The plain engine: a NaN stops the step and says where; clipping, bf16 autocast, a teacher and EMA held in bf16."""

import pytest
import torch
from torch import nn

from potstill.core.config import ConfigError, OptimConfig, TrainConfig, load_config
from potstill.core.distiller import Distiller
from potstill.core.engine import NonFiniteError, Part, PlainEngine
from tests_support import CONFIGS, make_config


def test_nan_loss_names_the_model_and_step():
    engine = PlainEngine()
    engine.step_index = 7
    trainable = engine.prepare("generator", [Part("generator", nn.Linear(2, 1), OptimConfig())])
    with pytest.raises(NonFiniteError, match="generator loss is nan at step 7"):
        engine.backward(trainable, torch.tensor(float("nan")), "generator")


def test_nan_gradient_names_the_parameter():
    engine = PlainEngine()
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    trainable = engine.prepare("critic", [Part("fake_score", model, OptimConfig())])
    model(torch.ones(1, 2)).sum().backward()
    model[1].weight.grad[0, 0] = float("inf")
    before = model[1].weight.detach().clone()
    with pytest.raises(NonFiniteError, match=r"fake_score: gradient of 1\.weight is not finite"):
        engine.step(trainable)
    torch.testing.assert_close(model[1].weight.detach(), before)    # nothing was applied


def test_gradient_clipping_bounds_the_update():
    engine = PlainEngine()
    model = nn.Linear(4, 1, bias=False)
    trainable = engine.prepare("generator", [Part("generator", model, OptimConfig(lr=1.0, grad_clip=0.5))])
    (model(torch.ones(1, 4)) * 100).sum().backward()
    norm = engine.step(trainable)["generator"]
    assert norm == pytest.approx(200.0)


@pytest.mark.parametrize("objective", ["dmd2", "sid"])
def test_a_nan_in_the_generator_stops_the_run_and_says_where(objective):
    distiller = Distiller(make_config(objective=objective, train={"steps": 5}))
    distiller.train(steps=2)
    with torch.no_grad():
        distiller.generator.mean[0] = float("nan")
    with pytest.raises(NonFiniteError, match="generator loss is nan at step 2"):
        distiller.train()


def test_bf16_autocast_runs_a_step():
    config = make_config(generator={"kind": "mlp"}, fake_score={"kind": "mlp", "hidden": 32},
                         train={"precision": "bf16_autocast", "steps": 2})
    distiller = Distiller(config)
    distiller.train()
    assert distiller.step == 2


def test_bf16_parameters_are_deepspeeds_and_the_plain_engine_says_so():
    with pytest.raises(ConfigError, match=r"train\.precision: bf16 .* bf16_autocast"):
        PlainEngine(train=TrainConfig(precision="bf16"))


def test_teacher_and_ema_held_in_bf16_answer_as_in_fp32_and_keep_their_schedule_exact():
    """Only parameters are cast: the schedule and the student's times stay fp32 (buffers), and a bf16 teacher
    answers fp32 callers (it autocasts itself) within bfloat16's rounding of the fp32 teacher."""
    quick = ["real_data=digits", "train.steps=2", "train.batch_size=8", "train.progress=false", "eval.n_samples=16",
             "eval.batch_size=16", "train.log_every=1"]
    config = CONFIGS / "image" / "digits_dmd2.yaml"
    fp32 = Distiller(load_config(config, quick), with_real_data=False)
    bf16 = Distiller(load_config(config, [*quick, "train.teacher_dtype=bf16", "train.ema_dtype=bf16"]))
    assert {p.dtype for p in bf16.teacher.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in bf16.ema.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in bf16.generator.parameters()} == {torch.float32}
    assert bf16.ema.model.times.dtype == torch.float32
    x = torch.randn(16, *fp32.teacher.sample_shape, generator=torch.Generator().manual_seed(0))
    t, labels = torch.full((16,), 2.0), torch.arange(16) % 10
    with torch.no_grad():
        exact, rounded = fp32.teacher.x0(x, t, labels), bf16.teacher.x0(x, t, labels)
    assert rounded.dtype == torch.float32
    assert (rounded - exact).abs().mean() <= 0.02 * exact.abs().mean()
    bf16.train()
    assert bf16.step == 2 and all(torch.isfinite(p).all() for p in bf16.ema.model.parameters())
