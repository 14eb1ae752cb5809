"""Numerical gradient checks on exact scores: the surrogate losses' parameter gradients (Monte Carlo
over a large batch, autograd through the surrogate) against autograd of closed-form divergences between
the Gaussian generator's and the Gaussian teacher's noisy marginals at a fixed t."""

import math

import pytest
import torch

from objective_fixtures import TEACHER_MEAN, TEACHER_STD, flat_grad
from objective_fixtures import gaussian_setup as setup
from potstill.core.objectives.dmd2 import DMD2, DMD2Options
from potstill.core.objectives.sid import sid_loss_per_element
from potstill.core.schedules import EDMSchedule, FlowSchedule, VPSchedule
from potstill.modalities.gaussian_mixture import GaussianMixture, GaussianMixtureDenoiser


def noisy_marginals(generator, schedule, t):
    a, s = schedule.alpha(t).double(), schedule.sigma(t).double()
    scale = generator.scale_tril().double()
    eye = torch.eye(2, dtype=torch.float64)
    p = (a * generator.mean.double(), a**2 * scale @ scale.T + s**2 * eye)
    q = (a * TEACHER_MEAN, a**2 * torch.diag(TEACHER_STD**2) + s**2 * eye)
    return p, q


def gaussian_kl(p, q):
    (m1, c1), (m2, c2) = p, q
    c2_inv = torch.linalg.inv(c2)
    diff = m2 - m1
    return 0.5 * (torch.trace(c2_inv @ c1) + diff @ c2_inv @ diff - len(m1) + torch.logdet(c2) - torch.logdet(c1))


def gaussian_fisher(p, q):
    """E_{x~p} ||grad log p(x) - grad log q(x)||^2 for Gaussians: the difference is M x + b."""
    (m1, c1), (m2, c2) = p, q
    p_inv, q_inv = torch.linalg.inv(c1), torch.linalg.inv(c2)
    m = q_inv - p_inv
    b = p_inv @ m1 - q_inv @ m2
    shift = m @ m1 + b
    return shift @ shift + torch.trace(m @ c1 @ m.T)


SCHEDULES = {"edm": (EDMSchedule(), 0.5), "vp": (VPSchedule("linear"), 0.3), "flow": (FlowSchedule(), 0.4)}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_dmd_gradient_is_the_kl_gradient(name):
    """Unnormalised DMD at fixed t: E[(D_fake - D_real) dx/dtheta] = sigma^2 / alpha^2 grad KL(p_t || q_t)."""
    schedule, position = SCHEDULES[name]
    generator, teacher, fake = setup(schedule)
    objective = DMD2(DMD2Options(t_low=position, t_high=position, t_grid=0, normalize=False))
    n = 400_000
    x = generator(torch.randn(n, 2))
    loss, _ = objective.generator_loss(x, None, teacher, fake)
    t = schedule.t_at(torch.tensor(position, dtype=torch.float64)).float().double()
    a, s = schedule.alpha(t), schedule.sigma(t)
    surrogate = flat_grad(loss, generator.parameters()).double() * 2 * a**2 / s**2    # mean over n * d = 2 elements
    exact = flat_grad(gaussian_kl(*noisy_marginals(generator, schedule, t)), generator.parameters()).double()
    assert torch.allclose(surrogate, exact, rtol=0.05, atol=0.02 * exact.abs().max())


def test_dmd_paper_form_scales_by_alpha():
    """The paper's w_t keeps alpha_t; DMD2's code drops it (reference §1)."""
    schedule = VPSchedule("linear")
    generator, teacher, fake = setup(schedule)
    losses = []
    for form in ("dmd2", "paper"):
        torch.manual_seed(4)
        x = generator(torch.randn(512, 2))
        objective = DMD2(DMD2Options(t_low=0.3, t_high=0.3, t_grid=0, gradient_form=form))
        losses.append(flat_grad(objective.generator_loss(x, None, teacher, fake)[0], generator.parameters()))
    alpha = schedule.alpha(schedule.t_at(torch.tensor(0.3, dtype=torch.float64)).float())
    torch.testing.assert_close(losses[1], losses[0] * alpha, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["edm", "vp"])
def test_sid_half_is_the_fisher_gradient(name):
    """SiD with alpha = 0.5 and wf = 1: grad of the Fisher divergence = 2 alpha_t^2 / sigma^4 x SiD (§4)."""
    schedule, position = SCHEDULES[name]
    generator, teacher, fake = setup(schedule)
    t_value = schedule.t_at(torch.tensor(position, dtype=torch.float64)).float()
    n = 400_000
    x = generator(torch.randn(n, 2))
    t = t_value.expand(n)
    x_t = schedule.add_noise(x, torch.randn_like(x), t)
    per_element = sid_loss_per_element(x, teacher.x0(x_t, t), fake.x0(x_t, t), 0.5, torch.ones(n))
    loss = per_element.sum() / n
    a, s = schedule.alpha(t_value).double(), schedule.sigma(t_value).double()
    surrogate = flat_grad(loss, generator.parameters()).double() * 2 * a**2 / s**4
    fisher = gaussian_fisher(*noisy_marginals(generator, schedule, t_value.double()))
    exact = flat_grad(fisher, generator.parameters()).double()
    assert torch.allclose(surrogate, exact, rtol=0.06, atol=0.03 * exact.abs().max())


def test_exact_fake_score_matches_the_generator_marginal():
    """The exact fake score's x0 equals a one-component mixture with the generator's moments."""
    schedule = EDMSchedule()
    generator, _, fake = setup(schedule)
    with torch.no_grad():
        generator.offdiag.zero_()
    std = torch.nn.functional.softplus(generator.raw_diag).double()
    mixture = GaussianMixture(generator.mean.detach()[None], std.detach()[None], torch.ones(1))
    reference = GaussianMixtureDenoiser(mixture, schedule)
    x_t, t = torch.randn(16, 2) * 3, torch.full((16,), 1.7)
    torch.testing.assert_close(fake.x0(x_t, t), reference.x0(x_t, t), rtol=1e-5, atol=1e-5)


def test_mixture_posterior_mean_matches_monte_carlo():
    """E[x0 | x_t] of a 2-mode mixture against importance-weighted samples of x0."""
    torch.manual_seed(5)
    mixture = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 1.0]]), torch.tensor([[0.5, 0.5], [0.3, 0.8]]),
                              torch.tensor([1.0, 3.0]))
    schedule = VPSchedule("linear")
    t = torch.tensor([0.4])
    a, s = schedule.alpha(t).double(), schedule.sigma(t).double()
    x_t = torch.tensor([[0.5, 0.2]], dtype=torch.float64)
    x0 = mixture.sample(2_000_000).double()
    weights = torch.exp(-((x_t - a * x0) ** 2).sum(1) / (2 * s**2))
    monte_carlo = (weights[:, None] * x0).sum(0) / weights.sum()
    exact = mixture.posterior_mean(x_t, a, s)[0]
    assert torch.allclose(exact, monte_carlo, atol=0.01)
    assert math.isclose(float(mixture.weights[1]), 0.75)
