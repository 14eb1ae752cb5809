"""Consistency students and CD (consistency.md §2, §7.6, §8 D): the boundary condition for any network, CD's own
parameterisation for an EDM network, the EDM-sigma inverse of each schedule, the teacher's Heun step against the
exact flow map, CD's fixed point moving with N as N^-2 (Heun) and N^-1 (Euler), and the errors."""

import copy
import math

import pytest
import torch
from safetensors.torch import save_file

from potstill.backbones.mlp import MLPBackbone, MLPOptions
from potstill.core.config import ConfigError
from potstill.core.consistency import ConsistencyGenerator, consistency_output, karras_grid
from potstill.core.denoiser import Denoiser
from potstill.core.distiller import Distiller
from potstill.core.objectives.cd import CD, CDOptions, teacher_step
from potstill.core.schedules import EDMSchedule, FlowOptions, FlowSchedule, Schedule, VPSchedule
from potstill.modalities.gaussian_mixture import GaussianMixture, GaussianMixtureDenoiser
from tests_support import (
    FeatureDistance,
    assert_samples_the_gaussian_teacher,
    make_config,
    trained_consistency_student,
)

SCHEDULES = {"edm": EDMSchedule(), "vp": VPSchedule("linear"), "flow": FlowSchedule(),
             "flow_shift3": FlowSchedule(FlowOptions(shift=3.0))}
MU, S = 0.3, 0.7          # the 1-D data law N(0.3, 0.7^2) of consistency.md §8


def mlp_denoiser(schedule, prediction: str) -> Denoiser:
    torch.manual_seed(0)
    return Denoiser(MLPBackbone(MLPOptions(dim=2, hidden=32, depth=2)), schedule, prediction, 0.5, (2,))


@pytest.mark.parametrize(("name", "prediction"), [("edm", "edm"), ("vp", "eps"), ("flow", "flow"), ("flow", "x0")])
def test_the_boundary_holds_for_any_network(name, prediction):
    schedule = SCHEDULES[name]
    denoiser = mlp_denoiser(schedule, prediction)
    sigma_min = float(schedule.edm_sigma(schedule.t_at(torch.tensor(0.0, dtype=torch.float64))))
    x = torch.randn(8, 2, dtype=torch.float64) * 3
    with torch.no_grad():
        f = consistency_output(denoiser.double(), x, torch.full((8,), sigma_min, dtype=torch.float64), None,
                               sigma_min)
    torch.testing.assert_close(f, x, rtol=0, atol=1e-12)


def test_an_edm_network_gets_cds_own_parameterisation():
    """c_skip = sd^2 / ((s - e)^2 + sd^2), c_out = sd (s - e) / sqrt(sd^2 + s^2), F at (c_in x, log(s) / 4)."""
    denoiser = mlp_denoiser(EDMSchedule(), "edm").double()
    x, sigma, e, sd = torch.randn(6, 2, dtype=torch.float64), torch.tensor([0.01, 0.1, 0.5, 2.0, 10.0, 80.0],
                                                                           dtype=torch.float64), 0.002, 0.5
    with torch.no_grad():
        f = consistency_output(denoiser, x, sigma, None, e)
        raw = denoiser.backbone(x / (sigma**2 + sd**2).sqrt()[:, None], torch.log(sigma) / 4, None)
    c_skip = sd**2 / ((sigma - e) ** 2 + sd**2)
    c_out = sd * (sigma - e) / (sd**2 + sigma**2).sqrt()
    torch.testing.assert_close(f, c_skip[:, None] * x + c_out[:, None] * raw)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_t_at_edm_sigma_inverts_the_schedule(name):
    schedule = SCHEDULES[name]
    t = schedule.t_at(torch.linspace(0.05, 0.95, 7, dtype=torch.float64))
    torch.testing.assert_close(schedule.t_at_edm_sigma(schedule.edm_sigma(t)), t, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["edm", "flow", "flow_shift3"])
def test_the_closed_form_inverses_agree_with_bisection(name):
    schedule = SCHEDULES[name]
    sigma = torch.logspace(-2.5, 1.8, 9, dtype=torch.float64)
    torch.testing.assert_close(schedule.t_at_edm_sigma(sigma), Schedule.t_at_edm_sigma(schedule, sigma),
                               rtol=1e-12, atol=1e-14)


def gaussian_teacher(schedule) -> GaussianMixtureDenoiser:
    mixture = GaussianMixture(torch.tensor([[MU]], dtype=torch.float64), torch.tensor([[S]], dtype=torch.float64),
                              torch.ones(1))
    return GaussianMixtureDenoiser(mixture, schedule)


def exact_map(x: torch.Tensor, sigma: torch.Tensor, to: torch.Tensor) -> torch.Tensor:
    """The probability-flow map of N(MU, S^2) data from level sigma to level `to` (VE): standardised values keep."""
    return MU + (x - MU) * ((S**2 + to**2) / (S**2 + sigma**2)).sqrt()[:, None]


@pytest.mark.parametrize("name", ["edm", "flow"])
def test_the_teachers_heun_step_follows_the_exact_flow(name):
    """Heun from sigma to sigma' on the exact Gaussian teacher: error O(h^3), Euler's O(h^2)."""
    teacher = gaussian_teacher(SCHEDULES[name])
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    errors = {}
    for solver in ("heun", "euler"):
        for h in (0.1, 0.05):
            sigma, to = torch.full((9,), 1.0, dtype=torch.float64), torch.full((9,), 1.0 - h, dtype=torch.float64)
            step = teacher_step(teacher, x, sigma, to, None, solver, 1.0)
            errors[solver, h] = float((step - exact_map(x, sigma, to)).abs().max())
    assert 6 < errors["heun", 0.1] / errors["heun", 0.05] < 10      # ~ 2^3
    assert 3 < errors["euler", 0.1] / errors["euler", 0.05] < 5     # ~ 2^2
    assert errors["heun", 0.05] < errors["euler", 0.05] / 20


class ExactPlusProbe(Denoiser):
    """A 1-D student whose consistency output is the exact map to sigma_min plus d c_out(sigma) tanh(x) (the
    family of consistency.md §8 D1): its x0 is solved from that f."""

    def __init__(self, sigma_min: float) -> None:
        super().__init__(None, EDMSchedule(), "x0", 0.5, (1,))
        self.d = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.sigma_min = sigma_min

    def _raw(self, x_t, t, cond, features):
        sigma, e, sd = t.double(), self.sigma_min, self.sigma_data
        c_out = sd * (sigma - e) / (sd**2 + sigma**2).sqrt()
        f = exact_map(x_t, sigma, torch.full_like(sigma, e)) + self.d * c_out[:, None] * x_t.tanh()
        shrink = ((sigma - e) / sigma)[:, None]
        c_skip, c_skip_edm = sd**2 / ((sigma - e) ** 2 + sd**2), sd**2 / (sigma**2 + sd**2)
        return (f - (c_skip - shrink[:, 0] * c_skip_edm)[:, None] * x_t) / shrink, None


def cd_fixed_point(scales: int, solver: str) -> float:
    """The d at which CD's expected semi-gradient (target = the student, stop-gradient) vanishes; the loss is
    quadratic in d with the target frozen, so two gradients on the same draws locate it."""
    e = 0.002
    generator = ConsistencyGenerator(ExactPlusProbe(e), [80.0], e, 80.0)
    objective = CD(CDOptions(scales=scales, solver=solver, target_decay=0.0), generator, copy.deepcopy(generator))
    teacher = gaussian_teacher(EDMSchedule())
    gradients = []
    for d in (0.0, 1.0):
        with torch.no_grad():
            generator.denoiser.d.fill_(d)
            objective.target.denoiser.d.fill_(d)
        torch.manual_seed(7)
        real = MU + S * torch.randn(400_000, 1, dtype=torch.float64)
        loss, _, _ = objective.generator_step(generator, real, None, teacher)
        gradients.append(float(torch.autograd.grad(loss, generator.denoiser.d)[0]))
    return -gradients[0] / (gradients[1] - gradients[0])


def test_cds_fixed_point_bias_falls_as_the_reference_says():
    """§7.6 / §8 D1: with finite N the fixed point is off the exact map, by ~N^-2 with Heun, ~N^-1 with Euler."""
    heun = [cd_fixed_point(n, "heun") for n in (20, 40)]
    euler = [cd_fixed_point(n, "euler") for n in (20, 40)]
    assert 3.0 < heun[0] / heun[1] < 5.5, heun
    assert 1.6 < euler[0] / euler[1] < 2.6, euler
    assert abs(heun[1]) < abs(euler[1]) / 3


def test_karras_grid_ends():
    grid = karras_grid(80.0, 0.002, 18, 7.0)
    assert float(grid[0]) == pytest.approx(80.0) and float(grid[-1]) == pytest.approx(0.002)
    assert bool((grid[1:] < grid[:-1]).all())


def test_sampling_re_noises_to_each_level_and_steps_change():
    denoiser = mlp_denoiser(EDMSchedule(), "edm")
    generator = ConsistencyGenerator(denoiser, [80.0], 0.002, 80.0)
    assert generator.nfe == 1
    generator.use_steps(3)
    assert generator.nfe == 3 and float(generator.sigmas[0]) == pytest.approx(80.0)
    assert bool((generator.sigmas[1:] < generator.sigmas[:-1]).all()) and float(generator.sigmas[-1]) > 0.002
    out = generator.sample(torch.randn(5, 2))
    assert out.shape == (5, 2) and math.isfinite(float(out.abs().sum()))


def test_cd_needs_a_consistency_student():
    with pytest.raises(ConfigError, match=r"generator\.kind: cd trains a consistency student"):
        Distiller(make_config(objective={"kind": "cd"}, fake_score=None, real_data="mixture"))


@pytest.fixture(scope="module")
def cd_student():
    """An MLP consistency student trained by CD (1500 steps) on exact draws of the Gaussian teacher."""
    return trained_consistency_student({"kind": "cd"}, 1500)


@pytest.mark.parametrize("steps", [1, 2])
def test_a_cd_student_reaches_the_teachers_moments(cd_student, steps):
    """It samples the teacher's mean and covariance in one step and in two."""
    assert_samples_the_gaussian_teacher(cd_student, steps)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_t_at_edm_sigma_differentiates_as_the_inverse(name):
    """dt/dsigma = 1 / (d sigma_E / dt), by autograd and by forward mode (what a JVP through it needs)."""
    schedule = SCHEDULES[name]
    sigma = schedule.edm_sigma(schedule.t_at(torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64))).double()
    step = 1e-6
    numeric = (schedule.t_at_edm_sigma(sigma + step) - schedule.t_at_edm_sigma(sigma - step)) / (2 * step)
    backward = torch.autograd.grad(schedule.t_at_edm_sigma(sigma.requires_grad_(True)).sum(), sigma)[0]
    forward = torch.func.jvp(lambda s: schedule.t_at_edm_sigma(s), (sigma.detach(),), (torch.ones_like(sigma),))[1]
    torch.testing.assert_close(backward, numeric, rtol=1e-5, atol=0)
    torch.testing.assert_close(forward, numeric, rtol=1e-5, atol=0)


def test_cd_reads_a_local_distance_network(tmp_path):
    """`distance: network` calls the user's factory, loads its weights file, sums its output per sample, passes
    gradients to the student's output and keeps its weights out of the run's checkpoint."""
    torch.manual_seed(0)
    reference = FeatureDistance()
    save_file(reference.state_dict(), tmp_path / "distance.safetensors")
    objective = {"kind": "cd", "distance": "network", "distance_network": "tests_support:feature_distance",
                 "distance_weights": str(tmp_path / "distance.safetensors")}
    generator = {"kind": "consistency", "network": {"kind": "mlp", "hidden": 32, "depth": 2}}
    distiller = Distiller(make_config(objective=objective, fake_score=None, real_data="mixture", generator=generator))
    a, b = torch.randn(7, 2, requires_grad=True), torch.randn(7, 2)
    distance = distiller.objective.distance(a, b)
    torch.testing.assert_close(distance, (reference.proj(a) - reference.proj(b)).square().sum(1))
    distance.sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert not any("proj" in key for key in distiller.objective.state_dict())
    with pytest.raises(ConfigError, match=r"objective\.distance_network: cannot load 'tests_support:nothing'"):
        Distiller(make_config(objective=objective | {"distance_network": "tests_support:nothing"}, fake_score=None,
                              real_data="mixture", generator=generator))
    save_file({"other": torch.zeros(1)}, tmp_path / "wrong.safetensors")
    with pytest.raises(ValueError, match=r"objective\.distance_weights: .* does not fit"):
        Distiller(make_config(objective=objective | {"distance_weights": str(tmp_path / "wrong.safetensors")},
                              fake_score=None, real_data="mixture", generator=generator))
