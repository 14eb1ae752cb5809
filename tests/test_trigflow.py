"""Teacher conversions to TrigFlow (consistency.md §1, §8 C1-C3), to float tolerance in float64: the exact Gaussian
teacher read through EDM, VP and flow schedules gives the exact TrigFlow velocity; an EDM network's F is minus its
raw output; a flow network's is SANA-Sprint's closed form of its velocity; a VP network's at sigma_d = 1 is its
v-prediction."""

import math

import pytest
import torch

from potstill.backbones.mlp import MLPBackbone, MLPOptions
from potstill.core.denoiser import Denoiser
from potstill.core.schedules import EDMSchedule, FlowSchedule, VPSchedule
from potstill.core.trigflow import schedule_point, trig_time, trigflow_velocity, trigflow_x0
from potstill.modalities.gaussian_mixture import GaussianMixture, GaussianMixtureDenoiser

MU = torch.tensor([0.3, -1.0], dtype=torch.float64)
S = torch.tensor([0.7, 1.3], dtype=torch.float64)
SCHEDULES = {"edm": EDMSchedule(), "vp": VPSchedule("linear"), "flow": FlowSchedule()}
T = torch.linspace(0.1, 1.45, 8, dtype=torch.float64)


def exact_velocity(x_t, t, sigma_data):
    """F* = (cos t x_t - E[x0 | x_t]) / (sigma_d sin t) for N(MU, S^2) data under TrigFlow."""
    cos, sin = torch.cos(t)[:, None], torch.sin(t)[:, None]
    posterior = MU + cos * S**2 / (cos**2 * S**2 + sin**2 * sigma_data**2) * (x_t - cos * MU)
    return (cos * x_t - posterior) / (sigma_data * sin)


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_the_exact_teacher_through_any_schedule_gives_the_exact_velocity(name, sigma_data):
    teacher = GaussianMixtureDenoiser(GaussianMixture(MU[None], S[None], torch.ones(1)), SCHEDULES[name])
    x_t = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        velocity = trigflow_velocity(teacher, x_t, T, None, sigma_data)
    torch.testing.assert_close(velocity, exact_velocity(x_t, T, sigma_data), rtol=1e-8, atol=1e-10)
    cos, sin = torch.cos(T)[:, None], torch.sin(T)[:, None]
    posterior = MU + cos * S**2 / (cos**2 * S**2 + sin**2 * sigma_data**2) * (x_t - cos * MU)
    torch.testing.assert_close(trigflow_x0(x_t, T, velocity, sigma_data), posterior, rtol=1e-8, atol=1e-10)


def network(schedule, prediction, sigma_data=0.5) -> Denoiser:
    torch.manual_seed(1)
    return Denoiser(MLPBackbone(MLPOptions(dim=2, hidden=16, depth=2)), schedule, prediction, sigma_data,
                    (2,)).double()


def test_an_edm_networks_velocity_is_minus_its_raw_output():
    sd = 0.5
    denoiser = network(EDMSchedule(), "edm", sd)
    x_t = torch.randn(8, 2, dtype=torch.float64)
    sigma = sd * torch.tan(T)
    with torch.no_grad():
        raw = denoiser.backbone(x_t / sd, torch.log(sigma) / 4, None)
        torch.testing.assert_close(trigflow_velocity(denoiser, x_t, T, None, sd), -raw, rtol=1e-8, atol=1e-10)


def test_a_flow_networks_velocity_is_sana_sprints_map():
    """sigma_d = 1 (SANA scales its latents by sigma_d first): tau = sin / (sin + cos), x_FM = x / (sin + cos),
    F = [(1 - 2 tau) x_FM + (1 - 2 tau + 2 tau^2) v] / sqrt(tau^2 + (1 - tau)^2)."""
    schedule = FlowSchedule()
    denoiser = network(schedule, "flow")
    x_t = torch.randn(8, 2, dtype=torch.float64)
    sin, cos = torch.sin(T), torch.cos(T)
    tau = sin / (sin + cos)
    x_fm = x_t / (sin + cos)[:, None]
    with torch.no_grad():
        v = denoiser.backbone(x_fm, schedule.c_noise(tau), None)
        sana = ((1 - 2 * tau)[:, None] * x_fm + (1 - 2 * tau + 2 * tau**2)[:, None] * v) / (
            tau**2 + (1 - tau) ** 2).sqrt()[:, None]
        torch.testing.assert_close(trigflow_velocity(denoiser, x_t, T, None, 1.0), sana, rtol=1e-7, atol=1e-9)


def test_a_vp_networks_velocity_at_unit_sigma_data_is_its_v_prediction():
    schedule = VPSchedule("linear")
    denoiser = network(schedule, "v", 1.0)
    x_t = torch.randn(8, 2, dtype=torch.float64)
    t = torch.linspace(0.2, 1.4, 8, dtype=torch.float64)
    with torch.no_grad():
        velocity = trigflow_velocity(denoiser, x_t, t, None, 1.0)
        x_s, s = schedule_point(denoiser, x_t, t, 1.0)      # alpha_s = cos t, sigma_s = sin t: the same point
        torch.testing.assert_close(x_s, x_t, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(velocity, denoiser.backbone(x_t, schedule.c_noise(s), None), rtol=1e-7,
                                   atol=1e-9)


def test_trig_time_is_arctan_of_sigma_over_sigma_data():
    assert float(trig_time(torch.tensor(0.5), 0.5)) == pytest.approx(math.pi / 4)
    assert float(trig_time(torch.tensor(80.0), 0.5)) == pytest.approx(1.56454, abs=1e-5)
