"""Equivalences the papers state, checked numerically on the same tensors (reference §2, §4, §5):
VSD and DMD share the gradient direction and differ by their weighting; f-distill with the reverse-KL
weighting is DMD2; SIM with L2 is SiD(alpha = 1) after a per-sample reweighting; and SIM's surrogate
has the gradient its theorem promises, checked by Monte Carlo on exact Gaussian scores."""

import pytest
import torch

from objective_fixtures import TEACHER_MEAN, TEACHER_STD, flat_grad, gaussian_setup, learned_fake, pin_noise
from potstill.core.objectives.dmd2 import DMD2, DMD2Options
from potstill.core.objectives.fdistill import FDistill, FDistillOptions
from potstill.core.objectives.sid import SiD, SiDOptions, sid_loss_per_element, weight_factor
from potstill.core.objectives.sim import sim_loss_per_sample
from potstill.core.objectives.vsd import VSD, VSDOptions
from potstill.core.schedules import EDMSchedule, VPSchedule

N = 128


def pinned_inputs(schedule, low=0.1, high=0.9):
    generator, teacher, _ = gaussian_setup(schedule)
    fake = learned_fake(schedule)
    torch.manual_seed(7)
    z, eps = torch.randn(N, 2), torch.randn(N, 2)
    t = schedule.t_at(torch.linspace(low, high, N, dtype=torch.float64)).float()
    return generator, teacher, fake, z, t, eps


def sample_grad(objective, x, teacher, fake, adversary=None):
    """dL/dx per sample for generator samples x."""
    x = x.detach().requires_grad_(True)
    loss, _ = objective.generator_loss(x, None, teacher, fake, adversary)
    return torch.autograd.grad(loss, x)[0]


def test_vsd_and_dmd_share_the_direction_and_differ_by_weighting():
    schedule = EDMSchedule()
    generator, teacher, fake, z, t, eps = pinned_inputs(schedule)
    x = generator(z).detach()
    vsd = sample_grad(pin_noise(VSD(VSDOptions()), t, eps), x, teacher, fake) * N          # D_fake - D_real
    dmd = sample_grad(pin_noise(DMD2(DMD2Options()), t, eps), x, teacher, fake) * x.numel()
    cosine = torch.nn.functional.cosine_similarity(vsd, dmd, dim=1)
    torch.testing.assert_close(cosine, torch.ones(N), atol=1e-5, rtol=0)
    normaliser = (x - teacher(x + t[:, None] * eps, t)).abs().mean(dim=1, keepdim=True)
    torch.testing.assert_close(dmd, vsd / normaliser, rtol=1e-5, atol=1e-6)


def test_vsd_weighting_is_sigma_alpha_times_diff_instruct():
    schedule = VPSchedule("linear")
    generator, teacher, fake, z, t, eps = pinned_inputs(schedule)
    x = generator(z).detach()
    unit = sample_grad(pin_noise(VSD(VSDOptions(t_sampling="uniform")), t, eps), x, teacher, fake)
    vsd = sample_grad(pin_noise(VSD(VSDOptions(weighting="vsd", t_sampling="uniform")), t, eps), x, teacher, fake)
    torch.testing.assert_close(vsd, unit * (schedule.sigma(t) * schedule.alpha(t))[:, None], rtol=1e-5, atol=1e-7)


class RandomLogits:
    def logits_at(self, x_t, t, cond):
        return torch.randn(x_t.shape[0], generator=torch.Generator().manual_seed(0)) * 3


def test_fdistill_reverse_kl_is_dmd2():
    """h = 1 for reverse KL, so f-distill is DMD2's gradient divided by (1 + 1e-6)."""
    schedule = EDMSchedule()
    generator, teacher, fake, z, t, eps = pinned_inputs(schedule)
    x = generator(z).detach()
    f_distill = sample_grad(pin_noise(FDistill(FDistillOptions(divergence="rkl")), t, eps), x, teacher, fake,
                            RandomLogits())
    dmd2 = sample_grad(pin_noise(DMD2(DMD2Options(normalizer_eps=1e-6)), t, eps), x, teacher, fake)
    torch.testing.assert_close(f_distill, dmd2 / (1 + 1e-6), rtol=1e-6, atol=1e-9)


def test_sim_l2_is_sid_alpha_one_reweighted():
    """SIM-L2 carries 2 alpha^2 / sigma^4; SiD(alpha = 1) divides by wf and scales by 100: equal after
    w = sigma^4 / (2 alpha^2 wf) * 100 per sample."""
    schedule = VPSchedule("linear")
    generator, teacher, fake, z, t, eps = pinned_inputs(schedule, 0.05, 0.8)
    sid = pin_noise(SiD(SiDOptions(alpha=1.0)), t, eps).generator_loss(generator(z), None, teacher, fake)[0]
    x = generator(z)
    x_t = schedule.add_noise(x, eps, t)
    y_real, y_fake = teacher(x_t, t), fake(x_t, t)
    a, s = schedule.alpha(t), schedule.sigma(t)
    per_sample = sim_loss_per_sample(x, y_real, y_fake, a, s, "l2", 0.0)
    weight = s**4 / (2 * a**2 * weight_factor(x, y_real, 1e-5)) * 100
    sim = (weight * per_sample).sum() / N
    params = list(generator.parameters())
    torch.testing.assert_close(flat_grad(sim, params), flat_grad(sid, params), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sid_loss_per_element(x, y_real, y_fake, 1.0, torch.ones(N)).sum(dim=1),
                               per_sample * s**4 / (2 * a**2), rtol=1e-4, atol=1e-6)


def gaussian_score(x_t, mean, cov):
    return -(x_t - mean) @ torch.linalg.inv(cov)


@pytest.mark.parametrize(("schedule", "distance", "c"), [(EDMSchedule(), "pseudo_huber", 0.5),
                                                         (EDMSchedule(), "l2", 0.0),
                                                         (VPSchedule("linear"), "pseudo_huber", 2.0)])
def test_sim_surrogate_has_the_theorem_gradient(schedule, distance, c):
    """grad_theta E_{x_t ~ sg(p_theta)} d(s_theta(x_t) - s_teacher(x_t)) equals the SIM surrogate's grad,
    with the pseudo-Huber normaliser differentiated (reference §4). Monte Carlo over 400k samples."""
    generator, teacher, fake = gaussian_setup(schedule)
    position = torch.tensor(0.5, dtype=torch.float64)
    t_value = schedule.t_at(position).float()
    n = 400_000
    torch.manual_seed(11)
    z, eps = torch.randn(n, 2), torch.randn(n, 2)
    t = t_value.expand(n)
    x = generator(z)
    x_t = schedule.add_noise(x, eps, t)
    a, s = schedule.alpha(t), schedule.sigma(t)
    surrogate = sim_loss_per_sample(x, teacher(x_t, t), fake(x_t, t), a, s, distance, c).mean()
    a, s = schedule.alpha(t_value).double(), schedule.sigma(t_value).double()
    eye = torch.eye(2, dtype=torch.float64)
    scale = generator.scale_tril().double()
    frozen_x_t = (a * (generator.mean.detach().double() + z.double() @ scale.detach().T) + s * eps.double())
    y = (gaussian_score(frozen_x_t, a * generator.mean.double(), a**2 * scale @ scale.T + s**2 * eye)
         - gaussian_score(frozen_x_t, a * TEACHER_MEAN, a**2 * torch.diag(TEACHER_STD**2) + s**2 * eye))
    squared = (y**2).sum(dim=1)
    divergence = (squared if distance == "l2" else (squared + c**2).sqrt() - c).mean()
    params = list(generator.parameters())
    exact = flat_grad(divergence, params).double()
    got = flat_grad(surrogate, params).double()
    assert torch.allclose(got, exact, rtol=0.03, atol=0.02 * exact.abs().max()), (got, exact)
