"""MeanFlow (consistency.md §5): the target v - (t - r) du/dt equals the exact average velocity of a Gaussian law
(the MeanFlow identity) and not a perturbed one; the student's forward-mode derivative agrees with finite
differences on an MLP and on a DiT, which start as the network's own velocity whatever r; a student trained by
MeanFlow distillation samples the teacher's moments in one and two steps; the configuration errors."""

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from potstill.backbones.dit import DiT, DiTOptions
from potstill.backbones.mlp import MLPBackbone, MLPOptions
from potstill.core.config import ConfigError
from potstill.core.denoiser import Denoiser
from potstill.core.distiller import Distiller
from potstill.core.meanflow import MeanFlowGenerator, flow_velocity
from potstill.core.objectives.meanflow import meanflow_target
from potstill.core.schedules import EDMSchedule, FlowSchedule
from potstill.modalities.gaussian_mixture import GaussianMixture, GaussianMixtureDenoiser
from tests_support import assert_samples_the_gaussian_teacher, make_config, trained_consistency_student

MU = torch.tensor([0.3, -1.0], dtype=torch.float64)
S = torch.tensor([0.7, 1.3], dtype=torch.float64)


def exact_average_velocity(z, r, t, perturb: float = 0.0):
    """(z_t - z_r) / (t - r) along the probability-flow ODE of N(MU, diag S^2) on z_t = (1 - t) x + t eps, whose
    flow map is z_r = (1 - r) MU + (std_r / std_t) (z_t - (1 - t) MU), std_t^2 = (1 - t)^2 S^2 + t^2; plus
    `perturb` (t - r) z, which is zero at r = t."""
    t_, r_ = t[:, None], r[:, None]
    std_t = ((1 - t_) ** 2 * S**2 + t_**2).sqrt()
    std_r = ((1 - r_) ** 2 * S**2 + r_**2).sqrt()
    z_r = (1 - r_) * MU + std_r / std_t * (z - (1 - t_) * MU)
    return (z - z_r) / (t_ - r_) + perturb * (t_ - r_) * z


def identity_residual(perturb: float) -> torch.Tensor:
    teacher = GaussianMixtureDenoiser(GaussianMixture(MU[None], S[None], torch.ones(1)), EDMSchedule())
    generator = torch.Generator().manual_seed(0)
    t = torch.linspace(0.05, 0.98, 48, dtype=torch.float64)
    r = t * torch.rand(48, dtype=torch.float64, generator=generator) * 0.95
    x = MU + S * torch.randn(48, 2, dtype=torch.float64, generator=generator)
    z = (1 - t[:, None]) * x + t[:, None] * torch.randn(48, 2, dtype=torch.float64, generator=generator)
    v = flow_velocity(teacher, z, t, None)

    def u(z_in, r_in, t_in):
        return exact_average_velocity(z_in, r_in, t_in, perturb)

    return meanflow_target(u, z, r, t, v) - u(z, r, t)


def test_the_target_is_the_exact_average_velocity_only():
    """The MeanFlow identity u = v - (t - r) du/dt holds to float precision for the exact u with the exact teacher's
    velocity (read through its x0 at the matching EDM point); 0.1 (t - r) z off it, it does not."""
    assert float(identity_residual(0.0).abs().max()) < 1e-9
    assert float(identity_residual(0.1).abs().max()) > 1e-2


def small_student(kind: str) -> tuple[MeanFlowGenerator, torch.Tensor, object]:
    torch.manual_seed(0)
    if kind == "mlp":
        denoiser = Denoiser(MLPBackbone(MLPOptions(dim=2, hidden=32, depth=2)), FlowSchedule(), "flow", 0.5, (2,))
        z, cond = torch.randn(6, 2, dtype=torch.float64), None
    else:
        options = DiTOptions(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=2,
                             num_classes=3, learn_sigma=False)
        denoiser = Denoiser(DiT(options), EDMSchedule(), "edm", 0.5, (1, 8, 8))
        for p in denoiser.parameters():      # adaLN-Zero starts blind to its conditioning
            nn.init.normal_(p, std=0.1)
        z, cond = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    return MeanFlowGenerator(denoiser, [0.98], 0.002, 0.98).double(), z, cond


@pytest.mark.parametrize("kind", ["mlp", "dit"])
def test_the_student_starts_as_its_velocity_and_its_jvp_matches_finite_differences(kind):
    student, z, cond = small_student(kind)
    t = torch.linspace(0.2, 0.9, 6, dtype=torch.float64)
    r = t * torch.linspace(0.0, 0.9, 6, dtype=torch.float64)
    torch.testing.assert_close(student.average_velocity(z, r, t, cond), flow_velocity(student.denoiser, z, t, cond))
    for p in student.interval.parameters():
        nn.init.normal_(p, std=0.3)
    assert not torch.allclose(student.average_velocity(z, r, t, cond), flow_velocity(student.denoiser, z, t, cond))

    def u(z_in, r_in, t_in):
        return student.average_velocity(z_in, r_in, t_in, cond)

    dz, dr, dt = torch.randn_like(z), torch.rand_like(r), torch.rand_like(t)
    h = 1e-6     # the flow schedule embeds 1000 t: central differences along t are off by 0.02 h^2 / 1e-8
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        _, jvp = torch.func.jvp(u, (z, r, t), (dz, dr, dt))
        numeric = (u(z + h * dz, r + h * dr, t + h * dt) - u(z - h * dz, r - h * dr, t - h * dt)) / (2 * h)
    torch.testing.assert_close(jvp, numeric, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def meanflow_student():
    """An MLP student distilled by MeanFlow from the exact Gaussian teacher."""
    return trained_consistency_student({"kind": "meanflow", "t_mean": 0.0, "r_mean": -1.0}, 2000, kind="meanflow")


@pytest.mark.parametrize("steps", [1, 2])
def test_a_meanflow_student_reaches_the_teachers_moments(meanflow_student, steps):
    assert_samples_the_gaussian_teacher(meanflow_student, steps)


def test_configuration_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"generator\.kind: meanflow trains"):
        Distiller(make_config(objective="meanflow", fake_score=None, real_data="mixture",
                              generator={"kind": "consistency", "network": {"kind": "mlp"}}))
    with pytest.raises(ValueError, match=r"generator\.network: the meanflow student embeds a second time"):
        MeanFlowGenerator(Denoiser(nn.Identity(), FlowSchedule(), "flow", 0.5, (2,)), [0.9], 0.01, 0.98)
    with pytest.raises(ValueError, match=r"adversary: objective 'meanflow'"):
        Distiller(make_config(objective="meanflow", fake_score="mlp", real_data="mixture", adversary="feature_gan",
                              generator={"kind": "meanflow", "network": {"kind": "mlp"}}))


def test_student_guidance_combines_the_conditional_and_null_average_velocities():
    """With guidance w the student's u is u_null + w (u_c - u_null), the interval embedding going with both halves of
    the doubled batch."""
    student, z, cond = small_student("dit")
    for p in student.interval.parameters():
        nn.init.normal_(p, std=0.3)
    t = torch.linspace(0.2, 0.9, 6, dtype=torch.float64)
    r = t * torch.linspace(0.0, 0.9, 6, dtype=torch.float64)
    with torch.no_grad():
        conditional = student.average_velocity(z, r, t, cond)
        unconditional = student.average_velocity(z, r, t, torch.full_like(cond, 3))
        student.guidance = 2.5
        torch.testing.assert_close(student.average_velocity(z, r, t, cond),
                                   unconditional + 2.5 * (conditional - unconditional))
