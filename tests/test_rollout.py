"""The causal rollout student (Self-Forcing, reference §9): its chunks and gradients equal a hand-written rollout
that recomputes the clean context with the masked forward and detaches it explicitly, so gradients reach the
parameters only through each chunk's exit step; sampling, streaming and the long-video cache modes."""

import copy

import pytest
import torch

from potstill.core.causal import CachePolicy
from potstill.core.rollout import CausalRolloutGenerator
from video_fixtures import CHUNK, FRAMES, TIMES, tiny_teacher


def rollout(policy=None, grad_frames=None, times=TIMES) -> CausalRolloutGenerator:
    return CausalRolloutGenerator(copy.deepcopy(tiny_teacher()), times, CHUNK, policy or CachePolicy(),
                                  grad_frames=grad_frames)


def hand_rollout(generator, noise, cond, exit_step):
    """No cache: each chunk's steps run the masked forward over [clean context, own input], context at t = 0
    (the same outputs; but its parameter gradients also flow through the recomputed context's K/V)."""
    d, schedule, times = generator.denoiser, generator.denoiser.schedule, generator.times.double()
    context, outputs = [], []
    for start in range(0, noise.shape[2], CHUNK):
        x_t = noise[:, :, start : start + CHUNK]

        def x0_at(x_t, k, context=context):
            clip = torch.cat([*context, x_t], dim=2)
            t = torch.zeros(clip.shape[0], clip.shape[2], dtype=clip.dtype)
            t[:, -CHUNK:] = times[k]
            return d.x0(clip, t, cond)[:, :, -CHUNK:]

        with torch.no_grad():
            for k in range(exit_step):
                x_t = schedule.add_noise(x0_at(x_t, k), torch.randn_like(x_t), times[k + 1].expand(x_t.shape[0]))
        x0 = x0_at(x_t, exit_step)
        context.append(x0.detach())
        outputs.append(x0)
    return torch.cat(outputs, dim=2)


def hand_cached_rollout(generator, noise, cond, exit_step):
    """With the backbone's cache: steps before the exit and every cache write explicitly without grad."""
    d, schedule, times = generator.denoiser, generator.denoiser.schedule, generator.times.double()
    cache = d.backbone.new_cache(noise.shape[0], CachePolicy(), None, noise.dtype)
    outputs = []
    for start in range(0, noise.shape[2], CHUNK):
        x_t = noise[:, :, start : start + CHUNK]
        with torch.no_grad():
            for k in range(exit_step):
                x0 = d.x0(x_t, times[k].expand(2), cond, cache=cache, write=False)
                x_t = schedule.add_noise(x0, torch.randn_like(x_t), times[k + 1].expand(x_t.shape[0]))
        outputs.append(d.x0(x_t, times[exit_step].expand(2), cond, cache=cache, write=False))
        with torch.no_grad():
            d.x0(outputs[-1], torch.zeros(2, dtype=noise.dtype), cond, cache=cache, write=True)
    return torch.cat(outputs, dim=2)


def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 1, FRAMES, 8, 8, generator=g, dtype=torch.float64), torch.tensor([0, 2])


@pytest.mark.parametrize("exit_step", [0, 1, 2])
def test_rollout_outputs_and_gradients_equal_a_hand_written_rollout(exit_step):
    generator, (noise, cond) = rollout(), inputs()
    weights = torch.randn(2, 1, FRAMES, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def grads(run):
        generator.zero_grad()
        torch.manual_seed(5)
        out = run()
        (out * weights).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in generator.named_parameters() if p.grad is not None}

    ours, our_grads = grads(lambda: torch.cat(list(generator.chunks(noise, cond, exit_step, FRAMES)), dim=2))
    masked, masked_grads = grads(lambda: hand_rollout(generator, noise, cond, exit_step))
    hand, hand_grads = grads(lambda: hand_cached_rollout(generator, noise, cond, exit_step))
    torch.testing.assert_close(ours, masked, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ours, hand, rtol=1e-9, atol=1e-9)
    assert our_grads.keys() == hand_grads.keys() and our_grads
    for name in our_grads:
        torch.testing.assert_close(our_grads[name], hand_grads[name], rtol=1e-8, atol=1e-10, msg=name)
    # Recomputing the context with grad would also train the parameters through the earlier chunks' K/V.
    assert not torch.allclose(our_grads["denoiser.backbone.x_embedder.proj.weight"],
                              masked_grads["denoiser.backbone.x_embedder.proj.weight"])


def test_no_gradient_crosses_the_cache_and_only_the_last_grad_frames_carry_grad():
    generator, (noise, cond) = rollout(), inputs()
    noise.requires_grad_(True)
    chunks = list(generator.chunks(noise, cond, 0, FRAMES))
    (grad,) = torch.autograd.grad(chunks[1].sum(), noise)
    assert grad[:, :, CHUNK : 2 * CHUNK].abs().sum() > 0
    assert grad[:, :, :CHUNK].abs().sum() == 0 and grad[:, :, 2 * CHUNK :].abs().sum() == 0
    late = list(generator.chunks(noise.detach(), cond, 1, 2))
    assert [c.requires_grad for c in late] == [False, False, True]
    limited = rollout(grad_frames=2)
    out = limited.rollout(noise.detach(), cond, 1)
    params = [p for p in limited.parameters() if p.requires_grad]
    early = torch.autograd.grad(out[:, :, :-2].sum(), params, retain_graph=True, allow_unused=True)
    late = torch.autograd.grad(out[:, :, -2:].sum(), params, allow_unused=True)
    assert all(g is None or not g.any() for g in early)
    assert any(g is not None and g.any() for g in late)


def test_training_draws_one_exit_step_per_rollout_and_sample_runs_every_step():
    generator, (noise, cond) = rollout(), inputs()
    torch.manual_seed(3)
    sampled = generator.sample(noise, cond)
    torch.manual_seed(3)
    with torch.no_grad():
        expected = hand_rollout(generator, noise, cond, len(TIMES) - 1)
    torch.testing.assert_close(sampled, expected, rtol=1e-9, atol=1e-9)
    torch.manual_seed(3)
    streamed = [chunk for chunk, seconds in generator.stream(noise, cond)]
    torch.testing.assert_close(torch.cat(streamed, dim=2), sampled, rtol=1e-9, atol=1e-9)
    assert generator.nfe == len(TIMES) + 1
    calls = []
    generator.denoiser.backbone.register_forward_hook(lambda module, args, kwargs, out: calls.append(kwargs["write"]),
                                                      with_kwargs=True)
    generator.sample(noise, cond)
    chunks = FRAMES // CHUNK          # every chunk's steps; the cache writes of all chunks but the last
    assert calls.count(False) == chunks * len(TIMES) and calls.count(True) == chunks - 1


def test_long_videos_roll_or_restart_and_a_bounded_cache_refuses():
    noise = torch.randn(1, 1, 16, 8, 8, dtype=torch.float64)
    rolling = rollout(CachePolicy(window_frames=4, sink_frames=0, mode="rolling"))
    assert rolling.sample(noise, torch.tensor([1])).shape == noise.shape
    cache = rolling.new_cache(noise)
    for start in range(0, 16, CHUNK):
        rolling.write_context(noise[:, :, start : start + CHUNK], torch.tensor([1]), cache)
    assert cache.frames_held <= 4
    segment = rollout(CachePolicy(mode="segment", max_frames=6))
    assert torch.isfinite(segment.sample(noise, torch.tensor([1]))).all()
    bounded = rollout(CachePolicy(mode="none", max_frames=6))
    with pytest.raises(ValueError, match=r"generator.cache.*rolling.*segment"):
        bounded.sample(noise, torch.tensor([1]))


@pytest.mark.parametrize("exit_step", [0, 2])
def test_a_long_training_rollout_returns_its_last_frames_with_the_gradients_of_a_hand_written_rollout(exit_step):
    """Self-Forcing++'s window: the prefix streams from fresh noise drawn first; the output and its parameter
    gradients are the last FRAMES frames of a hand-written cached rollout of the whole, since nothing crosses the
    cache with grad."""
    generator, (noise, cond) = rollout(), inputs()
    prefix = 2 * CHUNK

    def grads(run):
        generator.zero_grad()
        torch.manual_seed(9)
        out = run()
        (out * out.detach()).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in generator.named_parameters() if p.grad is not None}

    def hand():
        prefix_noise = torch.randn(2, 1, prefix, 8, 8, dtype=torch.float64)
        return hand_cached_rollout(generator, torch.cat([prefix_noise, noise], dim=2), cond, exit_step)[:, :, -FRAMES:]

    ours, our_grads = grads(lambda: generator.rollout(noise, cond, exit_step, prefix))
    theirs, their_grads = grads(hand)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    assert our_grads.keys() == their_grads.keys() and our_grads
    for name in our_grads:
        torch.testing.assert_close(our_grads[name], their_grads[name], rtol=1e-8, atol=1e-10, msg=name)


def test_long_rollouts_draw_their_prefix_in_whole_chunks_and_refuse_what_cannot_hold_them():
    generator = CausalRolloutGenerator(copy.deepcopy(tiny_teacher()), TIMES, CHUNK,
                                       CachePolicy(window_frames=4, mode="rolling"), rollout_frames=FRAMES + 2 * CHUNK)
    torch.manual_seed(0)
    assert {generator.draw_prefix_frames(FRAMES) for _ in range(60)} == {0, CHUNK, 2 * CHUNK}
    noise, cond = inputs()
    with torch.no_grad():
        assert generator(noise, cond).shape == noise.shape
    with pytest.raises(ValueError, match=r"generator\.rollout_frames.*whole number of chunks"):
        CausalRolloutGenerator(copy.deepcopy(tiny_teacher()), TIMES, CHUNK, CachePolicy(), rollout_frames=FRAMES + 1)
    with pytest.raises(ValueError, match=r"generator\.rollout_frames.*recipe self_forcing"):
        CausalRolloutGenerator(copy.deepcopy(tiny_teacher()), TIMES, CHUNK, CachePolicy(), recipe="diffusion_forcing",
                               rollout_frames=FRAMES + 2)


def test_frames_must_fill_whole_chunks():
    with pytest.raises(ValueError, match=r"generator\.chunk_frames"):
        rollout().sample(torch.randn(1, 1, 5, 8, 8, dtype=torch.float64), torch.tensor([0]))


@pytest.mark.parametrize("source", ["real", "own"])
def test_diffusion_forcing_noises_its_clip_per_chunk_and_denoises_it_in_one_masked_pass(source):
    """CausVid's recipe against a hand-made input: the real clip, or the student's own sample of the noise, noised
    per chunk to a step of its list or t = 0, then one masked forward; its grad reaches every parameter."""
    generator = CausalRolloutGenerator(copy.deepcopy(tiny_teacher()), TIMES, CHUNK, CachePolicy(),
                                       recipe="diffusion_forcing", inputs=source)
    given, cond = inputs()
    torch.manual_seed(5)
    out = generator(given, cond)
    torch.manual_seed(5)
    with torch.no_grad():
        clip = given if source == "real" else generator.sample(given, cond)
    steps = torch.randint(len(TIMES) + 1, (2, FRAMES // CHUNK))
    t = torch.cat([torch.tensor(TIMES), torch.zeros(1)]).double()[steps.repeat_interleave(CHUNK, dim=1)]
    x_t = generator.denoiser.schedule.add_noise(clip, torch.randn_like(clip), t)
    expected = generator.denoiser.x0(x_t, t, cond)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    out.sum().backward()
    assert all(p.grad is not None for p in generator.denoiser.parameters() if p.requires_grad)
    assert generator.trains_on_real == (source == "real")


def test_real_inputs_need_the_diffusion_forcing_recipe():
    with pytest.raises(ValueError, match=r"generator\.inputs"):
        CausalRolloutGenerator(copy.deepcopy(tiny_teacher()), TIMES, CHUNK, CachePolicy(), inputs="real")
