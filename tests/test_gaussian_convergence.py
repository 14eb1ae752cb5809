"""Each objective, with the exact teacher and the exact fake score of a Gaussian generator x = mu + L z,
drives mu and L L^T to the teacher's mean and covariance (here N([1, -2], diag(0.25, 2.25)))."""

import pytest
import torch

from potstill.core.distiller import Distiller
from tests_support import make_config

TARGET_MEAN = torch.tensor([1.0, -2.0])
TARGET_COV = torch.diag(torch.tensor([0.25, 2.25]))
MEAN_TOL = 0.1          # absolute, per coordinate
COV_TOL = 0.15          # relative Frobenius error of the covariance

OBJECTIVES = {
    "dmd2": {"kind": "dmd2"},
    "dmd2_paper_vp": {"kind": "dmd2", "gradient_form": "paper"},
    "sid": {"kind": "sid", "alpha": 1.2},
    "sid_alpha1": {"kind": "sid", "alpha": 1.0},
}
SCHEDULE = {"dmd2_paper_vp": "vp_linear"}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_gaussian_generator_converges_to_teacher_moments(name):
    config = make_config(
        objective=OBJECTIVES[name],
        teacher={"schedule": SCHEDULE.get(name, "edm")},
        train={"steps": 1500, "batch_size": 256, "generator_every": 1, "ema_decay": 0.98},
        optim={"generator": {"lr": 1e-2, "betas": [0.9, 0.99]}},
    )
    distiller = Distiller(config)
    distiller.train()
    generator = distiller.ema.model
    mean, cov = generator.mean.detach(), generator.covariance().detach()
    assert torch.allclose(mean, TARGET_MEAN, atol=MEAN_TOL), (name, mean)
    assert (cov - TARGET_COV).norm() / TARGET_COV.norm() < COV_TOL, (name, cov)
