"""Schedules: conversions round-trip, marginal moments, derivatives and the time grids of the methods."""

import pytest
import torch

from potstill.core.schedules import EDMSchedule, FlowOptions, FlowSchedule, VPSchedule, build_schedule

SCHEDULES = {
    "edm": EDMSchedule(),
    "vp_linear": VPSchedule("linear"),
    "vp_cosine": VPSchedule("cosine"),
    "flow": FlowSchedule(),
    "flow_shift3": FlowSchedule(FlowOptions(shift=3.0)),
}


@pytest.fixture(params=list(SCHEDULES))
def schedule(request):
    return SCHEDULES[request.param]


def test_conversions_round_trip(schedule):
    torch.manual_seed(0)
    x0, eps = torch.randn(64, 3, dtype=torch.float64), torch.randn(64, 3, dtype=torch.float64)
    t = schedule.sample_t(64, 0.05, 0.95).double()
    x_t = schedule.add_noise(x0, eps, t)
    torch.testing.assert_close(schedule.eps_from_x0(x_t, x0, t), eps)
    torch.testing.assert_close(schedule.x0_from_eps(x_t, eps, t), x0)
    torch.testing.assert_close(schedule.x0_from_score(x_t, schedule.score_from_x0(x_t, x0, t), t), x0)
    torch.testing.assert_close(schedule.x0_from_v(x_t, schedule.v_from_x0(x_t, x0, t), t), x0)
    torch.testing.assert_close(schedule.x0_from_flow(x_t, schedule.flow_from_x0(x_t, x0, t), t), x0)
    # the score of x_t | x0 is -eps / sigma
    torch.testing.assert_close(schedule.score_from_x0(x_t, x0, t), -eps / schedule.sigma(t)[:, None])


def test_flow_velocity_is_eps_minus_x0():
    s = FlowSchedule()
    x0, eps, t = torch.randn(8, 2), torch.randn(8, 2), torch.rand(8)
    torch.testing.assert_close(s.flow_from_x0(s.add_noise(x0, eps, t), x0, t), eps - x0)


def test_vp_v_prediction_matches_salimans_ho():
    s = VPSchedule("linear")
    x0, eps, t = torch.randn(8, 2), torch.randn(8, 2), torch.rand(8) * 0.9 + 0.05
    a, sg = s.alpha(t)[:, None], s.sigma(t)[:, None]
    torch.testing.assert_close(s.v_from_x0(s.add_noise(x0, eps, t), x0, t), a * eps - sg * x0)
    torch.testing.assert_close(a**2 + sg**2, torch.ones_like(a))


def test_marginal_moments(schedule):
    torch.manual_seed(1)
    n = 400_000
    t = torch.full((n,), float(schedule.t_at(torch.tensor(0.4, dtype=torch.float64))))
    x0 = 1.5 + 0.7 * torch.randn(n, 1)
    x_t = schedule.add_noise(x0, torch.randn(n, 1), t)
    a, s = schedule.alpha(t[:1]), schedule.sigma(t[:1])
    assert x_t.mean().item() == pytest.approx(float(a * 1.5), abs=0.01)
    assert x_t.var().item() == pytest.approx(float(a**2 * 0.49 + s**2), rel=0.01)


def test_derivatives_match_finite_differences(schedule):
    t = schedule.t_at(torch.linspace(0.1, 0.9, 9, dtype=torch.float64))
    h = 1e-6 * t
    torch.testing.assert_close(schedule.d_alpha(t), (schedule.alpha(t + h) - schedule.alpha(t - h)) / (2 * h),
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(schedule.d_sigma(t), (schedule.sigma(t + h) - schedule.sigma(t - h)) / (2 * h),
                               rtol=1e-4, atol=1e-6)


def test_positions_are_monotone_and_span_the_schedule(schedule):
    t = schedule.t_at(torch.linspace(0, 1, 101, dtype=torch.float64))
    noise_level = schedule.edm_sigma(t[1:-1])
    assert (noise_level[1:] > noise_level[:-1]).all()


def test_dmd2_and_sid_time_ranges_on_edm():
    """DMD2 indexes the 1000-point Karras grid at [20, 980]; SiD's tmax = 800 reaches sigma ~= 24.4 (§1, §3)."""
    edm = EDMSchedule()
    grid = edm.t_at(torch.tensor([20 / 999, 980 / 999], dtype=torch.float64))
    torch.testing.assert_close(grid, torch.tensor([0.0032, 72.05], dtype=torch.float64), atol=2e-4, rtol=1e-3)
    assert float(edm.t_at(torch.tensor(0.8, dtype=torch.float64))) == pytest.approx(24.4, abs=0.1)
    t = edm.sample_t(10_000, 0.02, 0.98, discrete=1000)
    assert t.min() >= 0.0032 - 1e-4 and t.max() <= 72.06
    assert len(torch.unique(t)) <= 961


def test_sampling_times_end_at_clean_data(schedule):
    times = schedule.sampling_times(10)
    assert len(times) == 11 and times[-1] == 0 and (times[:-1] > times[1:]).all()


def test_edm_dsm_weight_is_lambda_sigma():
    edm = EDMSchedule()
    sigma = torch.tensor([0.1, 1.0, 10.0])
    torch.testing.assert_close(edm.dsm_weight(sigma), (sigma**2 + 0.25) / (sigma * 0.5) ** 2)


def test_unknown_schedule_lists_choices():
    with pytest.raises(KeyError, match="valid choices: edm, flow, vp_cosine, vp_linear"):
        build_schedule("ddpm")
