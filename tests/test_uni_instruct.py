"""Uni-Instruct on exact Gaussian scores and ratios (uni_instruct.md §2, §5): the divergence table against autograd
of f; the x0-form surrogate against an independent score-form implementation of Form B on identical tensors; its
expected gradient at one noise level against the gradient of E_q[h(r) ||s_p - s_q||^2] by quadrature (and the
public code's missing DI term caught); its expected gradient over the unbiased time draw against
grad D_f(p_0 || q_0); rkl against SiD at alpha = 0.5; the configuration errors."""

import math

import pytest
import torch

from objective_fixtures import flat_grad, learned_fake
from potstill.core.config import ConfigError
from potstill.core.objectives.f_divergences import F_DIVERGENCES
from potstill.core.objectives.sid import SiD, SiDOptions
from potstill.core.objectives.uni_instruct import UniInstruct, UniInstructOptions
from potstill.core.schedules import EDMSchedule, VPSchedule
from potstill.modalities.gaussian_mixture import GaussianMixture, GaussianMixtureDenoiser, GaussianPosteriorDenoiser
from potstill.modalities.vector import GaussianGenerator
from tests_support import make_config

# Teacher and student variances within a factor two of each other in every direction, so that every
# divergence of the table (the chi-squares included) is finite at every noise level.
P_MEAN = torch.tensor([0.6, -0.4], dtype=torch.float64)
P_STD = torch.tensor([0.8, 1.1], dtype=torch.float64)
SCHEDULES = {"edm": (EDMSchedule(), 0.45), "vp": (VPSchedule("linear"), 0.35)}


def setup(schedule):
    torch.manual_seed(0)
    generator = GaussianGenerator(2, init_std=0.95, init_mean=[0.1, 0.2]).double()
    with torch.no_grad():
        generator.offdiag[1, 0] = 0.25
    teacher = GaussianMixtureDenoiser(GaussianMixture(P_MEAN[None], P_STD[None], torch.ones(1)), schedule)
    return generator, teacher, GaussianPosteriorDenoiser(generator, schedule)


def gaussian_log_density(x, mean, cov):
    return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)


def marginals(generator, a, s):
    """(mean, covariance) of the teacher's and the student's noisy marginals at alpha a, sigma s; the student's
    carry the generator's parameters, so what is built from them differentiates."""
    eye = torch.eye(2, dtype=torch.float64)
    scale = generator.scale_tril()
    teacher = (a * P_MEAN, a**2 * torch.diag(P_STD**2) + s**2 * eye)
    return teacher, (a * generator.mean, a**2 * scale @ scale.T + s**2 * eye)


AXIS = torch.linspace(-9, 9, 451, dtype=torch.float64)
GRID = torch.stack(torch.meshgrid(AXIS, AXIS, indexing="ij"), -1).reshape(-1, 2)
CELL = (18 / 450) ** 2


def fisher_integrand_mean(generator, divergence, a, s):
    """E_{q_t}[h(r) ||grad log p_t - grad log q_t||^2] by quadrature on a fixed grid (differentiable in theta)."""
    (mp, cp), (mq, cq) = marginals(generator, a, s)
    log_p, log_q = gaussian_log_density(GRID, mp, cp), gaussian_log_density(GRID, mq, cq)
    u = -(GRID - mp) @ torch.linalg.inv(cp) + (GRID - mq) @ torch.linalg.inv(cq)
    r = (log_p - log_q).exp()
    return (log_q.exp() * divergence.h(r) * u.square().sum(1)).sum() * CELL


def f_divergence(generator, divergence, a, s):
    """D_f(p_t || q_t) = E_q f(p / q), by quadrature."""
    (mp, cp), (mq, cq) = marginals(generator, a, s)
    log_p, log_q = gaussian_log_density(GRID, mp, cp), gaussian_log_density(GRID, mq, cq)
    return (log_q.exp() * divergence.f((log_p - log_q).exp())).sum() * CELL


@pytest.mark.parametrize("name", list(F_DIVERGENCES))
def test_table_weights_are_r2_f2_and_its_derivatives(name):
    """h = r^2 f''(r), h' and h'' as autograd finds them, and f(1) = 0."""
    d = F_DIVERGENCES[name]
    r = torch.tensor([0.2, 0.7, 1.0, 1.9, 6.0], dtype=torch.float64, requires_grad=True)
    f1 = torch.autograd.grad(d.f(r).sum(), r, create_graph=True)[0]
    f2 = torch.autograd.grad(f1.sum(), r)[0]
    torch.testing.assert_close(d.h(r), r**2 * f2)
    h = d.h(r) + 0 * r                  # a constant h still differentiates (to zero)
    dh = torch.autograd.grad(h.sum(), r, create_graph=True)[0] + 0 * r
    torch.testing.assert_close(d.dh(r), dh)
    torch.testing.assert_close(d.d2h(r), torch.autograd.grad(dh.sum(), r)[0])
    assert float(d.f(torch.ones((), dtype=torch.float64))) == pytest.approx(0.0, abs=1e-15)


def form_b_score_units(x, eps, t, schedule, teacher, fake, divergence, with_di4=True):
    """An independent Form B, written in scores (§2.2): (sigma^2 / 2) [sg(h) 2 u.c + sg(h - r h') ||u||^2
    + sg(lambda_DI (s_q - s_p)) . x_t], u = s_p - s_q, c = s_q + eps / sigma, lambda_DI = r^2 h'' ||u||^2
    - 2 r h' u.c (the last part dropped with with_di4=False, as the public code does)."""
    a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    x_t = a * x + s * eps
    s_p = (a * teacher.x0(x_t, t) - x_t) / s**2
    s_q = (a * fake.x0(x_t, t) - x_t) / s**2
    u, c = s_p - s_q, s_q + eps / s
    with torch.no_grad():
        r = (teacher.log_density(x_t, t) - fake.log_density(x_t, t)).exp()
        h, dh, d2h = divergence.h(r), divergence.dh(r), divergence.d2h(r)
        lam = r**2 * d2h * u.square().sum(1) - (2 * r * dh * (u * c).sum(1) if with_di4 else 0)
        di = lam[:, None] * (s_q - s_p)
    psi = h * 2 * (u * c).sum(1) + (h - r * dh) * u.square().sum(1) + (di * x_t).sum(1)
    return s[:, 0] ** 2 / 2 * psi


def pinned(options, t, eps):
    objective = UniInstruct(options)
    objective.times = lambda n, schedule: (t, None)
    objective.draw_noise = lambda x: eps
    return objective


@pytest.mark.parametrize("name", ["rkl", "fkl", "js", "pearson", "neyman", "hellinger", "jeffreys"])
@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
def test_x0_form_equals_score_form_on_identical_tensors(name, schedule_name):
    """The gradient in x of the objective's loss (weighting x0: 2 / SNR times the per-unit-log-SNR loss) against
    the score-form implementation above's, at per-sample times (the values differ by sg(...) . sigma eps, the DI
    term's product with x_t rather than x0, which carries no gradient)."""
    schedule, _ = SCHEDULES[schedule_name]
    generator, teacher, fake = setup(schedule)
    x = generator(torch.randn(64, 2, dtype=torch.float64)).detach().requires_grad_(True)
    t = schedule.t_at(torch.linspace(0.15, 0.85, 64, dtype=torch.float64))
    eps = torch.randn(64, 2, dtype=torch.float64)
    options = UniInstructOptions(divergence=name, ratio="exact", weighting="x0")
    loss, _ = pinned(options, t, eps).generator_loss(x, None, teacher, fake)
    snr = (schedule.alpha(t) / schedule.sigma(t)) ** 2
    reference = (2 / snr * form_b_score_units(x, eps, t, schedule, teacher, fake, F_DIVERGENCES[name])).mean()
    torch.testing.assert_close(torch.autograd.grad(loss, x)[0], torch.autograd.grad(reference, x)[0],
                               rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", ["rkl", "fkl", "js", "pearson", "neyman", "hellinger", "jeffreys"])
@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
def test_expected_gradient_at_one_time_is_the_expanded_divergence_gradient(name, schedule_name):
    """E[grad loss] at one t, with weighting x0, is (2 / SNR) (sigma^2 / 2) grad E_{q_t}[h(r) ||u||^2], the
    theta-dependence of q_t, s_q and r all counted (§2): Monte Carlo against quadrature."""
    schedule, position = SCHEDULES[schedule_name]
    generator, teacher, fake = setup(schedule)
    n = 400_000
    t_value = schedule.t_at(torch.tensor(position, dtype=torch.float64))
    torch.manual_seed(1)
    x = generator(torch.randn(n, 2, dtype=torch.float64))
    objective = pinned(UniInstructOptions(divergence=name, ratio="exact", weighting="x0"), t_value.expand(n),
                       torch.randn(n, 2, dtype=torch.float64))
    loss, _ = objective.generator_loss(x, None, teacher, fake)
    a, s = schedule.alpha(t_value), schedule.sigma(t_value)
    surrogate = flat_grad(loss, generator.parameters()) * a**2 / s**4
    exact = flat_grad(fisher_integrand_mean(generator, F_DIVERGENCES[name], a, s), generator.parameters())
    assert torch.allclose(surrogate, exact, rtol=0.05, atol=0.03 * exact.abs().max()), (surrogate, exact)


def test_the_public_codes_missing_term_is_caught():
    """Without DI-4 (2 r h' u.c in lambda_DI, absent from the public code) forward KL's expected gradient in the
    scale parameters is off by far more than the check above allows (by about a third here; the mean's is
    unaffected, since DI-4 vanishes for a pure translation)."""
    schedule, position = SCHEDULES["edm"]
    generator, teacher, fake = setup(schedule)
    n = 400_000
    t = schedule.t_at(torch.tensor(position, dtype=torch.float64)).expand(n)
    torch.manual_seed(1)
    x = generator(torch.randn(n, 2, dtype=torch.float64))
    loss = form_b_score_units(x, torch.randn(n, 2, dtype=torch.float64), t, schedule, teacher, fake,
                              F_DIVERGENCES["fkl"], with_di4=False).mean()
    a, s = schedule.alpha(t[0]), schedule.sigma(t[0])
    surrogate = flat_grad(loss, generator.parameters()) * 2 / s**2
    exact = flat_grad(fisher_integrand_mean(generator, F_DIVERGENCES["fkl"], a, s), generator.parameters())
    scale = slice(2, None)                  # raw_diag and offdiag, after the mean
    assert (surrogate - exact)[scale].norm() > 0.2 * exact[scale].norm()
    torch.testing.assert_close(surrogate[:2], exact[:2], rtol=0.05, atol=1e-3)


@pytest.mark.parametrize("name", ["rkl", "fkl", "js"])
def test_unbiased_weighting_gives_the_gradient_of_the_divergence_between_its_ends(name):
    """Thm 3.1: with positions uniform on [low, high] and the unbiased weight, E[grad loss] = grad [D_f(p_lo ||
    q_lo) - D_f(p_hi || q_hi)], the f-divergence at the lowest noise less that at the highest (EDM's sigma from
    0.002, nearly the clean divergence, to 5)."""
    schedule = EDMSchedule()
    generator, teacher, fake = setup(schedule)
    high = (5 ** (1 / 7) - 0.002 ** (1 / 7)) / (80 ** (1 / 7) - 0.002 ** (1 / 7))
    objective = UniInstruct(UniInstructOptions(divergence=name, ratio="exact", weighting="unbiased", t_low=0.0,
                                               t_high=high))
    n = 1_000_000
    torch.manual_seed(3)
    loss, _ = objective.generator_loss(generator(torch.randn(n, 2, dtype=torch.float64)), None, teacher, fake)
    surrogate = flat_grad(loss, generator.parameters())
    d = F_DIVERGENCES[name]
    ends = [schedule.t_at(torch.tensor(p, dtype=torch.float64)) for p in (0.0, high)]
    gap = f_divergence(generator, d, 1.0, ends[0]) - f_divergence(generator, d, 1.0, ends[1])
    exact = flat_grad(gap, generator.parameters())
    assert torch.allclose(surrogate, exact, rtol=0.05, atol=0.03 * exact.abs().max()), (surrogate, exact)


def test_rkl_with_sid_weighting_is_twice_sid_at_alpha_half():
    """§2.3: for reverse KL the surrogate is SiD's with alpha = 0.5 (SiD's 100x loss scale aside), times two."""
    schedule = EDMSchedule()
    teacher = GaussianMixtureDenoiser(GaussianMixture(P_MEAN[None], P_STD[None], torch.ones(1)), schedule)
    fake = learned_fake(schedule)
    torch.manual_seed(2)
    x = (torch.randn(32, 2) * 1.3).requires_grad_(True)
    t, eps = schedule.t_at(torch.rand(32, dtype=torch.float64)).float(), torch.randn(32, 2)
    objective = pinned(UniInstructOptions(divergence="rkl"), t, eps)
    objective.ratio = lambda *args: torch.full((32,), 1.7)      # reverse KL's weights do not depend on it
    ours, _ = objective.generator_loss(x, None, teacher, fake)
    sid = SiD(SiDOptions(alpha=0.5, loss_scale=1.0, reduction="sum"))
    sid.noisy = lambda x, schedule: (t, eps, schedule.add_noise(x, eps, t))
    theirs, _ = sid.generator_loss(x, None, teacher, fake)
    torch.testing.assert_close(ours, 2 * theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], 2 * torch.autograd.grad(theirs, x)[0],
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("objective", "fake_score", "message"), [
    ({"ratio": "exact"}, {"kind": "mlp"}, "objective.ratio: 'exact' reads exact noisy log densities, which "
                                          "fake_score cannot give"),
    ({"ratio": "exact", "weighting": "unbiased", "t_grid": 1000}, {"kind": "exact_gaussian"},
     "objective.weighting: 'unbiased'"),
    ({"ratio": "exact", "t_low": 0.0, "t_high": 1.0}, {"kind": "exact_gaussian"}, "objective.t_low, objective.t_high"),
])
def test_configuration_errors_name_the_key(objective, fake_score, message):
    from potstill.core.distiller import Distiller
    teacher = {"schedule": "flow"} if objective.get("t_high") == 1.0 else {}
    config = make_config(objective={"kind": "uni_instruct", **objective}, fake_score=fake_score, teacher=teacher)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Distiller(config)


def test_the_discriminator_ratio_needs_an_adversary():
    from potstill.core.distiller import Distiller
    with pytest.raises(ValueError, match="adversary: objective 'uni_instruct' reads a feature discriminator"):
        Distiller(make_config(objective={"kind": "uni_instruct"}))


def test_log_densities_are_the_gaussian_marginals():
    """The exact teacher's and exact fake score's log densities, which `ratio: exact` reads."""
    schedule = VPSchedule("linear")
    generator, teacher, fake = setup(schedule)
    x_t, t = torch.randn(8, 2, dtype=torch.float64) * 2, torch.linspace(0.1, 0.9, 8, dtype=torch.float64)
    for k in range(8):
        a, s = schedule.alpha(t[k]), schedule.sigma(t[k])
        generator.requires_grad_(False)
        (mp, cp), (mq, cq) = marginals(generator, a, s)
        assert float(teacher.log_density(x_t, t)[k]) == pytest.approx(float(gaussian_log_density(x_t[k], mp, cp)))
        assert float(fake.log_density(x_t, t)[k]) == pytest.approx(float(gaussian_log_density(x_t[k], mq, cq)))
    assert math.isfinite(float(fake.log_density(x_t, t).sum()))
