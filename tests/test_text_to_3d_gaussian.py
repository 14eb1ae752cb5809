"""Text-to-3D's objectives at their exact fixed points: the `identity` field distilled from the Gaussian teacher
N(mu, s^2 I) by the shipped configs: SDS -> mu, CFD with fixed noise at a fixed t -> mu + s^2 (alpha / sigma) eps
for each sample's own eps, VSD -> N(mu, s^2 I); CFD's loss against a hand-written one on identical tensors; the
annealed time draw; and a CFD run with SDE-refreshed noise resumes exactly."""

import math

import pytest
import torch

from potstill.core.config import ConfigError, load_config
from potstill.core.distiller import Distiller
from potstill.core.objectives.cfd import CFD, CFDOptions
from potstill.core.schedules import build_schedule
from potstill.core.time_draws import TimeOptions, anneal_position, draw_times
from potstill.modalities.vector import GaussianMixtureDenoiser, GMMTeacherOptions, build_mixture
from tests_support import CONFIGS, whole_and_resumed

MU = torch.tensor([0.3, 0.8])
S = 0.7


def trained(name: str, *overrides: str) -> Distiller:
    config = load_config(CONFIGS / "text_to_3d" / f"gaussian_identity_{name}.yaml",
                         ["train.progress=false", "teacher.means=[[0.3, 0.8]]", f"teacher.stds=[{S}]", *overrides])
    distiller = Distiller(config)
    distiller.train()
    return distiller


def test_sds_pulls_every_sample_to_the_mean():
    samples = trained("sds").generator.field.values.detach()
    assert (samples.mean(0) - MU).norm() < 0.03
    assert samples.std(0).max() < 0.1                       # from 1.5 at the start; the teacher's own is 0.7


def test_cfd_with_fixed_noise_settles_each_sample_at_its_own_fixed_point():
    position = 0.35
    distiller = trained("cfd", f"objective.t_anneal=[[0.0, {1 - (position - 0.02) / 0.96}], [1.0, "
                               f"{1 - (position - 0.02) / 0.96}]]")
    schedule = distiller.teacher.schedule
    t = schedule.t_at(torch.tensor([position], dtype=torch.float64)).float()
    ratio = schedule.alpha(t) / schedule.sigma(t)
    eps = distiller.objective.noise_source.values
    expected = MU + S**2 * ratio * eps
    error = (distiller.generator.field.values.detach() - expected).norm(dim=1)
    assert error.median() < 1e-3 and error.max() < 0.05
    assert abs(float(distiller.generator.field.values.detach().std(0).mean()) - S**2 * float(ratio)) < 0.05


def test_vsd_particles_spread_as_the_teacher():
    samples = trained("vsd").generator.field.values.detach()
    assert (samples.mean(0) - MU).norm() < 0.1
    torch.testing.assert_close(samples.std(0), torch.full((2,), S), atol=0.08, rtol=0)


class FixedNoise(torch.nn.Module):
    def __init__(self, eps):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return self.eps


def test_cfd_loss_and_gradient_match_the_formula_on_identical_tensors():
    mixture = build_mixture(GMMTeacherOptions(means=[[0.3, 0.8], [-1.0, 0.5]], stds=[0.7, 0.4], schedule="flow"))
    teacher = GaussianMixtureDenoiser(mixture, build_schedule("flow"))
    objective = CFD(CFDOptions())
    objective.progress = 0.3
    eps = torch.randn(5, 2)
    objective.use_noise_source(FixedNoise(eps))
    x = torch.randn(5, 2, requires_grad=True)
    loss, _ = objective.generator_loss(x, None, teacher)
    loss.backward()
    position = 0.98 - 0.96 * (0.3 + (0.6 - 0.3) * (0.3 - 0.1) / (0.5 - 0.1))     # p between the 10% and 50% knots
    t = teacher.schedule.t_at(torch.full((5,), position, dtype=torch.float64)).float()
    x_t = (1 - t[:, None]) * x.detach() + t[:, None] * eps                         # flow: alpha = 1 - t, sigma = t
    d = teacher.x0(x_t, t, None)
    residual = x.detach() - d
    torch.testing.assert_close(loss, (residual**2).sum() / 5)
    torch.testing.assert_close(x.grad, 2 * residual / 5)


@pytest.mark.parametrize("progress,p", [(0.0, 0.0), (0.05, 0.15), (0.1, 0.3), (0.3, 0.45), (0.5, 0.6), (0.75, 0.7),
                                        (1.0, 0.8)])
def test_the_annealed_time_follows_cfds_schedule_and_is_shared_by_the_batch(progress, p):
    options = TimeOptions(t_sampling="annealed")
    assert anneal_position(options, progress) == pytest.approx(0.02 + 0.96 * (1 - p))
    schedule = build_schedule("flow")
    t = draw_times(options, schedule, 7, progress)
    assert torch.equal(t, t[:1].expand(7))
    with pytest.raises(ValueError, match="'annealed' follows a run's progress"):
        draw_times(options, schedule, 7)


@pytest.mark.parametrize("knots", ["[[0, 0], [0.5, 0.3], [0.4, 0.6], [1, 0.8]]", "[[0, 0], [1, 1.5]]",
                                   "[[0.1, 0], [1, 0.5]]", "[[0, 0]]"])
def test_anneal_knots_must_rise_from_start_to_end(knots):
    with pytest.raises(ConfigError, match=r"objective\.t_anneal: must be \[progress, position\] pairs with progress "
                                          r"rising from 0 to 1"):
        load_config(CONFIGS / "text_to_3d" / "gaussian_identity_cfd.yaml", [f"objective.t_anneal={knots}"])


def test_a_cfd_run_with_refreshed_noise_resumes_exactly(tmp_path):
    config = load_config(CONFIGS / "text_to_3d" / "gaussian_identity_cfd.yaml",
                         ["train.progress=false", "train.steps=40", "train.checkpoint_every=15",
                          "modality.consistent_noise.refresh=0.1", "generator.field.count=32", "train.batch_size=16"])
    whole, resumed, start = whole_and_resumed(config, tmp_path, 25)
    assert start == 15
    torch.testing.assert_close(resumed.generator.field.values, whole.generator.field.values, rtol=0, atol=0)
    torch.testing.assert_close(resumed.objective.noise_source.values, whole.objective.noise_source.values,
                               rtol=0, atol=0)
    assert not math.isclose(float(whole.objective.noise_source.calls), 0.0)
