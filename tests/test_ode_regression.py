"""ODE regression (CausVid's initialisation): each chunk of a clip gets one step of the student's list or is
given clean, its input is the teacher's state at exactly that step, and the loss is the MSE to the endpoint
over the frames with t != 0; a one-pass student draws one step per sample."""

import copy

import torch

from potstill.core.causal import CachePolicy
from potstill.core.generator import DenoiserGenerator
from potstill.core.objectives.ode_regression import ODERegression, ODERegressionOptions
from potstill.core.rollout import CausalRolloutGenerator
from video_fixtures import CHUNK, FRAMES, TIMES, tiny_teacher


def fake_pairs(batch: int, steps: int):
    g = torch.Generator().manual_seed(0)
    states = torch.randn(batch, steps, 1, FRAMES, 8, 8, generator=g, dtype=torch.float64)
    return states, torch.randn(batch, 1, FRAMES, 8, 8, generator=g, dtype=torch.float64)


def test_each_chunk_reads_the_teachers_state_at_its_step_or_is_clean():
    generator = CausalRolloutGenerator(copy.deepcopy(tiny_teacher()), TIMES, CHUNK, CachePolicy())
    objective = ODERegression(ODERegressionOptions(), None)
    states, endpoint = fake_pairs(64, len(TIMES))
    torch.manual_seed(0)
    x_t, t = objective.inputs(generator, states, endpoint)
    assert t.shape == (64, FRAMES)
    seen = set()
    for b in range(64):
        for start in range(0, FRAMES, CHUNK):
            chunk_t = t[b, start : start + CHUNK]
            assert (chunk_t == chunk_t[0]).all()
            value = round(float(chunk_t[0]), 6)
            seen.add(value)
            expected = (endpoint[b, :, start : start + CHUNK] if value == 0 else
                        states[b, TIMES.index(value), :, start : start + CHUNK])
            torch.testing.assert_close(x_t[b, :, start : start + CHUNK], expected)
    assert seen == {*TIMES, 0.0}


def test_the_loss_is_the_mse_to_the_endpoint_over_noisy_frames_only():
    generator = CausalRolloutGenerator(copy.deepcopy(tiny_teacher()), TIMES, CHUNK, CachePolicy())
    objective = ODERegression(ODERegressionOptions(pairs=4), None)
    states, endpoint = fake_pairs(4, len(TIMES))
    objective.pairs = {"noise": states[:, 0].clone(), "states": states, "endpoint": endpoint,
                       "cond": torch.tensor([0, 1, 2, 0])}
    torch.manual_seed(7)
    loss, metrics, samples = objective.generator_step(generator, torch.zeros(4, 1, FRAMES, 8, 8), None, None, None)
    torch.manual_seed(7)
    x_t, t = objective.inputs(generator, states, endpoint)
    prediction = generator.denoise(x_t, t, objective.pairs["cond"])
    noisy = (t != 0)[:, None, :, None, None].expand_as(prediction)
    torch.testing.assert_close(loss.double(), ((prediction - endpoint)[noisy] ** 2).mean(), rtol=1e-5, atol=1e-7)
    assert samples is None and metrics["ode_mse"] == loss.item()


def test_a_one_pass_student_draws_one_step_per_sample():
    generator = DenoiserGenerator(copy.deepcopy(tiny_teacher()), TIMES)
    objective = ODERegression(ODERegressionOptions(), None)
    states, endpoint = fake_pairs(16, len(TIMES))
    x_t, t = objective.inputs(generator, states, endpoint)
    assert t.shape == (16,)
    for b in range(16):
        torch.testing.assert_close(x_t[b], states[b, TIMES.index(round(float(t[b]), 6))])
