"""sCM (consistency.md §3, §8 A): the tangent vanishes at the exact consistency map of a Gaussian law with the
exact teacher's velocity and does not for a perturbed one; the forward-mode JVP agrees with finite differences on
an MLP and on a DiT (attention through the math kernel); a student trained by sCD samples the teacher's
moments in one and two steps; the configuration errors."""

import pytest
import torch

from potstill.backbones.dit import DiT, DiTOptions
from potstill.backbones.mlp import MLPBackbone, MLPOptions
from potstill.core.config import ConfigError, load_config
from potstill.core.denoiser import Denoiser
from potstill.core.distiller import Distiller
from potstill.core.objectives.scm import scm_tangent
from potstill.core.schedules import EDMSchedule, FlowSchedule
from potstill.core.trigflow import trigflow_velocity
from potstill.modalities.gaussian_mixture import GaussianMixture, GaussianMixtureDenoiser
from tests_support import CONFIGS, assert_samples_the_gaussian_teacher, make_config, trained_consistency_student

MU = torch.tensor([0.3, -1.0], dtype=torch.float64)
S = torch.tensor([0.7, 1.3], dtype=torch.float64)
SD = 0.5


class ExactConsistency(Denoiser):
    """A student whose x0 at the EDM point matching TrigFlow's (x_t, t) is the exact probability-flow endpoint
    f*(x_t, t) = MU + S (x_t - cos t MU) / sqrt(cos^2 t S^2 + sin^2 t SD^2), plus `perturb` sin t x_t."""

    def __init__(self, perturb: float = 0.0) -> None:
        super().__init__(None, EDMSchedule(), "x0", SD, (2,))
        self.perturb = perturb

    def _raw(self, x_s, s, cond, features):
        t = torch.atan(s / SD)[:, None]
        x_t = x_s * torch.cos(t)
        exact = MU + S * (x_t - torch.cos(t) * MU) / (torch.cos(t) ** 2 * S**2 + torch.sin(t) ** 2 * SD**2).sqrt()
        return exact + self.perturb * torch.sin(t) * x_t, None


def tangent_at(student, t, seed=0):
    teacher = GaussianMixtureDenoiser(GaussianMixture(MU[None], S[None], torch.ones(1)), EDMSchedule())
    generator = torch.Generator().manual_seed(seed)
    x0 = MU + S * torch.randn(len(t), 2, dtype=torch.float64, generator=generator)
    x_t = torch.cos(t)[:, None] * x0 + torch.sin(t)[:, None] * SD * torch.randn(len(t), 2, dtype=torch.float64,
                                                                                  generator=generator)
    dxdt = SD * trigflow_velocity(teacher, x_t, t, None, SD)
    return scm_tangent(lambda x, tt: trigflow_velocity(student, SD * x, tt, None, SD), x_t, t, dxdt, SD, 1.0)[1]


def test_the_tangent_vanishes_at_the_exact_consistency_map_only():
    """§8 A1: the tangent is zero to float precision at f*, with the exact teacher velocity; 0.1 sin t x_t off it,
    it is not."""
    t = torch.linspace(0.05, 1.5, 64, dtype=torch.float64)
    assert float(tangent_at(ExactConsistency(), t).abs().max()) < 1e-10
    assert float(tangent_at(ExactConsistency(0.1), t).abs().max()) > 1e-2


def finite_difference(fn, x, t, dx, dt, h=1e-5):
    return (fn(x + h * dx, t + h * dt) - fn(x - h * dx, t - h * dt)) / (2 * h)


@pytest.mark.parametrize("kind", ["mlp", "dit"])
def test_the_jvp_matches_finite_differences(kind):
    """In float64, along x and t together, against central differences."""
    torch.manual_seed(0)
    if kind == "mlp":
        student = Denoiser(MLPBackbone(MLPOptions(dim=2, hidden=32, depth=2)), FlowSchedule(), "flow", SD, (2,))
        x = torch.randn(6, 2, dtype=torch.float64)
        student = student.double()
    else:
        options = DiTOptions(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=2,
                             num_classes=3, learn_sigma=False)
        student = Denoiser(DiT(options), EDMSchedule(), "edm", SD, (1, 8, 8)).double()
        x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    t = torch.linspace(0.2, 1.3, 6, dtype=torch.float64)
    cond = None if kind == "mlp" else torch.tensor([0, 1, 2, 0, 1, 2])
    dx, dt = torch.randn_like(x), torch.rand(6, dtype=torch.float64)

    def velocity(x_scaled, times):
        return trigflow_velocity(student, SD * x_scaled, times, cond, SD)

    from torch.nn.attention import SDPBackend, sdpa_kernel
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        _, jvp = torch.func.jvp(velocity, (x, t), (dx, dt))
        numeric = finite_difference(velocity, x, t, dx, dt)
    torch.testing.assert_close(jvp, numeric, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def scd_student():
    """An MLP student trained by sCD against the exact Gaussian teacher (4000 steps: at 1500 its one-step mean was
    still 0.1-0.2 short)."""
    return trained_consistency_student({"kind": "scm", "tangent_warmup": 0.2}, 4000, parameterisation="trigflow",
                                       logvar_head=True)


@pytest.mark.parametrize("steps", [1, 2])
def test_an_scd_student_reaches_the_teachers_moments(scd_student, steps):
    """It samples the teacher's mean and covariance in one step and in two."""
    assert_samples_the_gaussian_teacher(scd_student, steps)


@pytest.mark.parametrize(("generator", "message"), [
    ({"kind": "consistency", "network": {"kind": "mlp"}}, "generator.parameterisation: scm trains"),
    ({"kind": "consistency", "parameterisation": "trigflow", "network": {"kind": "mlp"}},
     "objective.adaptive_weighting: needs the student's logvar head"),
])
def test_configuration_errors_name_the_key(generator, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        Distiller(make_config(objective={"kind": "scm"}, fake_score=None, real_data="mixture", generator=generator))


def test_the_time_embedding_logvar_head_reads_the_networks_own_embedding():
    """`logvar_input: time_embedding` (SANA-Sprint, FastGen): zero at the start, then a linear layer on the DiT's
    timestep embedding at c_noise = log(sigma_d tan t) / 4 (sigma_d the network's, 0.75 for digits), whose gradient
    reaches the shared embedder."""
    distiller = Distiller(load_config(CONFIGS / "image" / "digits_scm.yaml",
                                      ["train.progress=false", "generator.logvar_input=time_embedding"]))
    generator = distiller.generator
    t = torch.linspace(0.1, 1.5, 5)
    assert torch.equal(generator.logvar(t), torch.zeros(5))
    torch.nn.init.normal_(generator.logvar.linear.weight)
    embedder = generator.denoiser.backbone.t_embedder
    sigma = generator.denoiser.sigma_data * torch.tan(t.double())
    by_hand = generator.logvar.linear(embedder(0.25 * torch.log(sigma).float()))[:, 0]
    torch.testing.assert_close(generator.logvar(t), by_hand)
    generator.logvar(t).sum().backward()
    assert embedder.mlp[0].weight.grad.abs().sum() > 0
