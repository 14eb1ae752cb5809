"""Each objective's generator gradient against an independent re-implementation of the published code
(reference §1-§8), on identical generator samples, times and noise: written the way the papers' code
computes them (p_real/p_fake, eps space, score space, explicit loops), and agreeing to float tolerance."""

import pytest
import torch
import torch.nn.functional as F

from objective_fixtures import flat_grad, gaussian_setup, learned_fake, pin_noise
from potstill.backbones.mlp import MLPBackbone, MLPOptions
from potstill.core.denoiser import Denoiser
from potstill.core.objectives.adversarial import ADD, ADDOptions
from potstill.core.objectives.dmd import DMD, DMDOptions
from potstill.core.objectives.dmd2 import DMD2, DMD2Options
from potstill.core.objectives.fdistill import FDistill, FDistillOptions
from potstill.core.objectives.sds import SDS, SDSOptions
from potstill.core.objectives.sid import LongShortGuidance, SiD, SiDOptions
from potstill.core.objectives.sida import SiDA, SiDAOptions
from potstill.core.objectives.sim import SIM, SIMOptions
from potstill.core.objectives.vsd import VSD, VSDOptions
from potstill.core.schedules import EDMSchedule, VPSchedule

N = 64


def inputs(schedule, position_low=0.1, position_high=0.9, seed=3):
    generator, teacher, _ = gaussian_setup(schedule)
    fake = learned_fake(schedule)
    torch.manual_seed(seed)
    z, eps = torch.randn(N, 2), torch.randn(N, 2)
    t = schedule.t_at(torch.linspace(position_low, position_high, N, dtype=torch.float64)).float()
    return generator, teacher, fake, z, t, eps


def compare(ours: torch.Tensor, reference: torch.Tensor, generator, scale: float = 1.0):
    torch.testing.assert_close(flat_grad(ours, generator.parameters()),
                               scale * flat_grad(reference, generator.parameters()), rtol=1e-5, atol=1e-7)


def col(v: torch.Tensor) -> torch.Tensor:
    return v[:, None]


def test_dmd2_matches_the_dmd2_edm_code():
    schedule = EDMSchedule()
    generator, teacher, fake, z, t, eps = inputs(schedule)
    objective = pin_noise(DMD2(DMD2Options()), t, eps)
    ours = objective.generator_loss(generator(z), None, teacher, fake)[0]
    x = generator(z)
    with torch.no_grad():
        x_t = x + col(t) * eps
        p_real = x - teacher(x_t, t)
        p_fake = x - fake(x_t, t)
        grad = torch.nan_to_num((p_real - p_fake) / p_real.abs().mean(dim=1, keepdim=True))
    reference = 0.5 * F.mse_loss(x, (x - grad).detach(), reduction="mean")
    compare(ours, reference, generator)


def test_dmd_paper_form_and_regression_match_the_paper():
    schedule = VPSchedule("linear")
    generator, teacher, fake, z, t, eps = inputs(schedule)
    objective = pin_noise(DMD(DMDOptions(pairs=N), generator, None), t, eps)
    reference_noise, reference_target = torch.randn(N, 2), torch.randn(N, 2) + 1
    objective.pairs = {"noise": reference_noise, "target": reference_target}
    ours = objective.generator_loss(generator(z), None, teacher, fake)[0]
    x = generator(z)
    a, s = schedule.alpha(t), schedule.sigma(t)
    with torch.no_grad():
        x_t = col(a) * x + col(s) * eps
        d_real = teacher(x_t, t)
        grad = col(a) * (fake(x_t, t) - d_real) / (x - d_real).abs().mean(dim=1, keepdim=True)
    reference = (0.5 * F.mse_loss(x, (x - grad).detach())
                 + 0.25 * F.mse_loss(generator(reference_noise), reference_target))
    compare(ours, reference, generator)


def test_diff_instruct_matches_its_gloss():
    """Diff-Instruct: loss = sum over pixels (and batch) of (D_fake - D_real) x; potstill divides by the batch."""
    schedule = EDMSchedule()
    generator, teacher, fake, z, t, eps = inputs(schedule)
    ours = pin_noise(VSD(VSDOptions()), t, eps).generator_loss(generator(z), None, teacher, fake)[0]
    x = generator(z)
    with torch.no_grad():
        x_t = x + col(t) * eps
        direction = fake(x_t, t) - teacher(x_t, t)
    reference = (direction * x).sum()
    compare(ours, reference, generator, scale=1 / N)


def test_vsd_matches_swiftbrush_in_eps_space():
    schedule = VPSchedule("linear")
    generator, teacher, fake, z, t, eps = inputs(schedule)
    objective = VSD(VSDOptions(weighting="vsd", t_sampling="uniform", reduction="mean"))
    ours = pin_noise(objective, t, eps).generator_loss(generator(z), None, teacher, fake)[0]
    x = generator(z)
    alpha_bar = schedule.alpha(t) ** 2
    with torch.no_grad():
        x_t = col(alpha_bar.sqrt()) * x + col((1 - alpha_bar).sqrt()) * eps
        eps_teacher = (x_t - col(alpha_bar.sqrt()) * teacher(x_t, t)) / col((1 - alpha_bar).sqrt())
        eps_lora = (x_t - col(alpha_bar.sqrt()) * fake(x_t, t)) / col((1 - alpha_bar).sqrt())
        grad = col(1 - alpha_bar) * (eps_teacher - eps_lora)
    reference = 0.5 * F.mse_loss(x, (x - grad).detach(), reduction="mean")
    compare(ours, reference, generator)


def sid_reference(x, y_real, y_fake, alpha):
    wf = (x - y_real).abs().mean(dim=1, keepdim=True).detach().clip(min=1e-5)
    loss = (y_real - y_fake) * ((y_real - x) - alpha * (y_real - y_fake)) / wf
    return loss, wf


def test_sid_matches_sid_loss():
    schedule = EDMSchedule()
    generator, teacher, fake, z, t, eps = inputs(schedule, 0.0, 0.8)
    ours = pin_noise(SiD(SiDOptions(alpha=1.2)), t, eps).generator_loss(generator(z), None, teacher, fake)[0]
    x = generator(z)
    x_t = x + col(t) * eps
    loss, _ = sid_reference(x, teacher(x_t, t), fake(x_t, t), 1.2)
    compare(ours, loss.sum() * 100 / N, generator)


def conditional_network(schedule, seed):
    torch.manual_seed(seed)
    backbone = MLPBackbone(MLPOptions(dim=2, hidden=32, depth=2, num_classes=3))
    return Denoiser(backbone, schedule, "edm", 1.0, (2,), num_classes=3).requires_grad_(False)


def test_sid_long_short_guidance_matches_sid_lsg():
    """kappa_4 (short) on the teacher, kappa_2 = kappa_3 (long) on the fake score, CFG u + k (c - u)."""
    schedule = EDMSchedule()
    generator, _, _, z, t, eps = inputs(schedule, 0.0, 0.8)
    teacher, fake = conditional_network(schedule, 5), conditional_network(schedule, 6)
    cond = torch.arange(N) % 3
    objective = SiD(SiDOptions(alpha=1.0, guidance=LongShortGuidance(long=2.0, short=3.0)))
    ours = pin_noise(objective, t, eps).generator_loss(generator(z), cond, teacher, fake)[0]
    x = generator(z)
    x_t = x + col(t) * eps
    null = torch.full_like(cond, 3)

    def guided(network, scale):
        unconditional = network(x_t, t, null)
        return unconditional + scale * (network(x_t, t, cond) - unconditional)

    loss, _ = sid_reference(x, guided(teacher, 3.0), guided(fake, 2.0), 1.0)
    compare(ours, loss.sum() * 100 / N, generator)


def test_sim_matches_the_score_space_formula():
    """SIM from its theorem in score space: -d'(y) . (s_fake - grad log q(x_t | x0)), times sigma^4/alpha^2."""
    schedule = VPSchedule("linear")
    generator, teacher, fake, z, t, eps = inputs(schedule, 0.05, 0.8)
    objective = SIM(SIMOptions(c=0.7))
    ours = pin_noise(objective, t, eps).generator_loss(generator(z), None, teacher, fake)[0]
    x = generator(z)
    a, s = col(schedule.alpha(t)), col(schedule.sigma(t))
    x_t = a * x + s * eps
    score_real = (a * teacher(x_t, t) - x_t) / s**2
    score_fake = (a * fake(x_t, t) - x_t) / s**2
    y = score_fake - score_real
    d_prime = y / ((y**2).sum(dim=1, keepdim=True) + 0.7**2).sqrt()
    conditional_score = -(x_t - a * x) / s**2
    per_sample = -(d_prime * (score_fake - conditional_score)).sum(dim=1) * (s**4 / a**2)[:, 0]
    compare(ours, per_sample.sum() / N, generator)


class FixedLogits:
    """A stand-in discriminator that returns given logits at any x_t."""

    def __init__(self, logits):
        self.logits = logits

    def logits_at(self, x_t, t, cond):
        return self.logits


@pytest.mark.parametrize("divergence", ["js", "kl"])
def test_fdistill_matches_fastgen(divergence):
    schedule = EDMSchedule()
    generator, teacher, fake, z, _, eps = inputs(schedule)
    t = schedule.t_at(torch.rand(N, generator=torch.Generator().manual_seed(2), dtype=torch.float64)).float()
    logits = torch.linspace(-12, 12, N)[torch.randperm(N, generator=torch.Generator().manual_seed(3))]
    objective = pin_noise(FDistill(FDistillOptions(divergence=divergence)), t, eps)
    ours = objective.generator_loss(generator(z), None, teacher, fake, FixedLogits(logits))[0]
    x = generator(z)
    ratio = logits.clamp(-10, 10).exp().clamp(0.1, 20)
    t_min, t_max = schedule.t_at(torch.tensor(0.002)).item(), schedule.t_at(torch.tensor(0.998)).item()
    bins = [min(int((ti - t_min) / (t_max - t_min) * 10), 9) for ti in t.tolist()]
    normalised = torch.stack([ratio[i] / ratio[[j for j in range(N) if bins[j] == bins[i]]].mean() for i in range(N)])
    h = normalised if divergence == "kl" else normalised / (1 + normalised)
    h = h / (h.mean() + 1e-6)
    with torch.no_grad():
        x_t = x + col(t) * eps
        d_real = teacher(x_t, t)
        grad = col(h) * (fake(x_t, t) - d_real) / ((x - d_real).abs().mean(dim=1, keepdim=True) + 1e-6)
    reference = 0.5 * F.mse_loss(x, (x - grad).detach())
    compare(ours, reference, generator)


def test_sida_generator_matches_sida_loss():
    """SiD plus CHW * BCE_mean * sum_i 1/wf_i, total 0.5 (100 SiD_sum + 0.01 GAN) / batch."""
    schedule = EDMSchedule()
    generator, teacher, fake, z, t, eps = inputs(schedule, 0.0, 0.8)
    objective = pin_noise(SiDA(SiDAOptions(alpha=1.0)), t, eps)
    ours = objective.generator_loss(generator(z), None, teacher, fake)[0]
    x = generator(z)
    x_t = x + col(t) * eps
    loss, wf = sid_reference(x, teacher(x_t, t), fake(x_t, t), 1.0)
    logits = fake.features(x_t, t, None, [-1])[0].mean(dim=-1).clamp(-10, 10)
    bce = torch.nn.BCEWithLogitsLoss()(logits, torch.ones_like(logits))
    gan = (bce / wf[:, 0] * 2).sum()
    compare(ours, 0.5 * (100 * loss.sum() + 0.01 * gan) / N, generator)


def test_sds_matches_threestudio():
    schedule = VPSchedule("linear")
    generator, teacher, _, z, t, eps = inputs(schedule)
    ours = pin_noise(SDS(SDSOptions()), t, eps).generator_loss(generator(z), None, teacher)[0]
    x = generator(z)
    alpha_bar = schedule.alpha(t) ** 2
    with torch.no_grad():
        x_t = col(alpha_bar.sqrt()) * x + col((1 - alpha_bar).sqrt()) * eps
        eps_pred = (x_t - col(alpha_bar.sqrt()) * teacher(x_t, t)) / col((1 - alpha_bar).sqrt())
        grad = torch.nan_to_num(col(1 - alpha_bar) * (eps_pred - eps))
    reference = 0.5 * F.mse_loss(x, (x - grad).detach(), reduction="sum") / N
    compare(ours, reference, generator)


def test_add_distillation_term_matches_the_paper():
    schedule = VPSchedule("linear")
    generator, teacher, _, z, t, eps = inputs(schedule)
    ours = pin_noise(ADD(ADDOptions()), t, eps).generator_loss(generator(z), None, teacher)[0]
    x = generator(z)
    alpha_bar = schedule.alpha(t) ** 2
    with torch.no_grad():
        target = teacher(col(alpha_bar.sqrt()) * x + col((1 - alpha_bar).sqrt()) * eps, t)
    reference = 2.5 * (alpha_bar * ((x - target) ** 2).mean(dim=1)).mean()
    compare(ours, reference, generator)
