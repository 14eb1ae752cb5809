"""Each objective, with the exact teacher and the exact fake score of a Gaussian generator x = mu + L z,
drives mu and L L^T to the teacher's mean and covariance (here N([1, -2], diag(0.25, 2.25))). f-distill and
Uni-Instruct read the exact log density ratio; SDS, which has no fake score, collapses onto the mean instead."""

import copy

import pytest
import torch

from objective_fixtures import gaussian_setup
from potstill.core.distiller import Distiller
from potstill.core.objectives.fdistill import FDistill, FDistillOptions
from potstill.core.schedules import EDMSchedule
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
    "diff_instruct": {"kind": "vsd"},
    "vsd_vp": {"kind": "vsd", "weighting": "vsd", "t_sampling": "uniform"},
    "dmd_with_regression": {"kind": "dmd", "pairs": 512, "pair_nfe": 35},
    "sim_pseudo_huber": {"kind": "sim", "distance": "pseudo_huber", "c": 1.0},
    "sim_l2": {"kind": "sim", "distance": "l2"},
    **{f"uni_instruct_{d}": {"kind": "uni_instruct", "divergence": d, "ratio": "exact"}
       for d in ("rkl", "fkl", "jeffreys", "js", "pearson", "neyman", "hellinger")},
    "uni_instruct_fkl_unbiased": {"kind": "uni_instruct", "divergence": "fkl", "ratio": "exact",
                                  "weighting": "unbiased"},
}
SCHEDULE = {"dmd2_paper_vp": "vp_linear", "vsd_vp": "vp_linear"}


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


def test_sds_collapses_onto_the_teacher_mean():
    """SDS is mode seeking: the mean goes to the teacher's, the spread to zero (no fake score holds it)."""
    config = make_config(objective={"kind": "sds"}, fake_score=None,
                         train={"steps": 1500, "batch_size": 256, "ema_decay": 0.98},
                         optim={"generator": {"lr": 1e-2, "betas": [0.9, 0.99]}})
    distiller = Distiller(config)
    distiller.train()
    generator = distiller.ema.model
    assert torch.allclose(generator.mean.detach(), TARGET_MEAN, atol=MEAN_TOL), generator.mean
    assert generator.covariance().detach().trace() < 0.05 * TARGET_COV.trace()


class ExactLogRatio:
    """log p_teacher,t(x_t) - log q_theta,t(x_t) from the exact teacher's and exact fake score's densities: the
    discriminator f-distill would learn, exactly."""

    def __init__(self, teacher, fake):
        self.teacher, self.fake = teacher, fake

    def logits_at(self, x_t, t, cond):
        return (self.teacher.log_density(x_t, t) - self.fake.log_density(x_t, t)).float()


@pytest.mark.parametrize("divergence", ["js", "kl", "rkl", "hellinger"])
def test_fdistill_with_the_exact_ratio_converges(divergence):
    torch.manual_seed(0)
    schedule = EDMSchedule()
    generator, teacher, fake = gaussian_setup(schedule)
    objective = FDistill(FDistillOptions(divergence=divergence))
    ratio = ExactLogRatio(teacher, fake)
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-2, betas=(0.9, 0.99))
    average = copy.deepcopy(generator)
    for _ in range(1500):
        loss, _ = objective.generator_loss(generator(torch.randn(256, 2)), None, teacher, fake, ratio)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for kept, current in zip(average.parameters(), generator.parameters(), strict=True):
                kept.lerp_(current, 0.02)
    mean, cov = average.mean.detach(), average.covariance().detach()
    assert torch.allclose(mean, TARGET_MEAN, atol=MEAN_TOL), (divergence, mean)
    assert (cov - TARGET_COV).norm() / TARGET_COV.norm() < COV_TOL, (divergence, cov)
