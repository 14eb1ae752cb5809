"""The plain engine: a NaN stops the step and says where; clipping and bf16 autocast."""

import pytest
import torch
from torch import nn

from potstill.core.config import OptimConfig
from potstill.core.distiller import Distiller
from potstill.core.engine import NonFiniteError, Part, PlainEngine
from tests_support import make_config


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
                         train={"bf16": True, "steps": 2})
    distiller = Distiller(config)
    distiller.train()
    assert distiller.step == 2
