"""Block-causal attention and KV-cache streaming (core/causal.py, reference §9): the mask follows its rule,
streaming chunk by chunk equals the masked forward (windows and sinks included), the cache stays bounded
under rolling, and its errors name the config keys."""

import pytest
import torch

from potstill.backbones.video_dit import VideoDiT, VideoDiTOptions
from potstill.core.causal import CachePolicy, block_causal_mask

TINY = VideoDiTOptions(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=2, num_heads=2,
                       num_classes=3, causal=True)


def causal_model(chunk_frames: int, window_frames=None, sink_frames=0, seed=0) -> VideoDiT:
    """A float64 causal VideoDiT with random weights (the zero init would hide the attention)."""
    torch.manual_seed(seed)
    model = VideoDiT(TINY).double()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    model.chunk_frames, model.window_frames, model.sink_frames = chunk_frames, window_frames, sink_frames
    return model


def clip(frames: int, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    noisy = torch.randn(batch, 1, frames, 8, 8, generator=g, dtype=torch.float64)
    clean = torch.randn(batch, 1, frames, 8, 8, generator=g, dtype=torch.float64)
    t_noisy = 1000 * torch.rand(batch, frames, generator=g, dtype=torch.float64)
    return noisy, clean, t_noisy, torch.zeros(batch, frames, dtype=torch.float64), torch.tensor([0, 2])


def test_block_causal_mask_follows_its_rule():
    frames, tokens, chunk, window, sinks = 7, 2, 2, 3, 1
    mask = block_causal_mask(frames, tokens, chunk, window, sinks)
    assert mask.shape == (frames * tokens, frames * tokens) and mask.dtype == torch.bool
    for q in range(frames * tokens):
        for k in range(frames * tokens):
            fq, fk = q // tokens, k // tokens
            end = (fq // chunk + 1) * chunk
            assert mask[q, k] == (fk < end and (fk >= end - window or fk < sinks))
    full = block_causal_mask(6, 1, 3)
    assert full[:3, :3].all() and not full[:3, 3:].any() and full[3:].all()


CASES = [  # chunk_frames, window_frames, sink_frames, frames
    (1, None, 0, 6), (2, None, 0, 6), (3, None, 0, 6), (1, 2, 0, 7), (2, 4, 1, 8), (2, 2, 2, 8), (1, 3, 1, 8),
    (3, 3, 0, 6),
]


@pytest.mark.parametrize(("chunk", "window", "sinks", "frames"), CASES)
def test_streaming_equals_the_masked_forward(chunk, window, sinks, frames):
    """Each chunk: read-only at its noise, then written with its own clean input at t = 0; every read equals
    the masked forward on (earlier clean frames, this chunk noisy), and the writes equal it on the clean clip."""
    model = causal_model(chunk, window, sinks)
    noisy, clean, t_noisy, t_clean, y = clip(frames)
    mode = "rolling" if window is not None else "none"
    cache = model.new_cache(2, CachePolicy(window_frames=window, sink_frames=sinks, mode=mode))
    writes = []
    with torch.no_grad():
        for start in range(0, frames, chunk):
            end = start + chunk
            assert cache.next_frame == start
            read = model(noisy[:, :, start:end], t_noisy[:, start:end], y, cache=cache)
            inputs = torch.cat([clean[:, :, :start], noisy[:, :, start:end]], dim=2)
            times = torch.cat([t_clean[:, :start], t_noisy[:, start:end]], dim=1)
            torch.testing.assert_close(read, model(inputs, times, y)[:, :, start:end], rtol=0, atol=1e-10)
            writes.append(model(clean[:, :, start:end], t_clean[:, start:end], y, cache=cache, write=True))
            if window is not None:
                assert cache.frames_held <= window - chunk + sinks
        torch.testing.assert_close(torch.cat(writes, dim=2), model(clean, t_clean, y), rtol=0, atol=1e-10)


def test_a_window_really_forgets():
    """With a window of 2 frames, each layer reaches one frame further back: in 2 layers a change to frame 1
    reaches frames 2 and 3, and leaves every later frame's output exactly as it was."""
    model = causal_model(1, window_frames=2)
    _, clean, _, t_clean, y = clip(6)
    changed = clean.clone()
    changed[:, :, 1] += 1.0
    with torch.no_grad():
        before, after = model(clean, t_clean, y), model(changed, t_clean, y)
    assert torch.equal(before[:, :, 4:], after[:, :, 4:])
    assert not torch.allclose(before[:, :, 3], after[:, :, 3])


def test_streaming_from_a_later_start_frame_uses_absolute_rope_positions():
    """A cache started at frame k RoPEs its keys at positions k..; since RoPE is relative, the outputs equal
    the masked forward from frame 0, while the cached keys themselves differ."""
    model = causal_model(2)
    noisy, _, t_noisy, _, y = clip(4)
    caches = {k: model.new_cache(2, CachePolicy(), start_frame=k) for k in (0, 5)}
    with torch.no_grad():
        outputs = {k: torch.cat([model(noisy[:, :, s:s + 2], t_noisy[:, s:s + 2], y, cache=cache, write=True)
                                 for s in (0, 2)], dim=2) for k, cache in caches.items()}
        masked = model(noisy, t_noisy, y)
    assert caches[5].next_frame == 9 and caches[5].held == [5, 6, 7, 8]
    for out in outputs.values():
        torch.testing.assert_close(out, masked, rtol=0, atol=1e-10)
    assert not torch.allclose(caches[0].layer(0)[0], caches[5].layer(0)[0])
    angles = model.rope.angles(0, 9)
    torch.testing.assert_close(model.rope.angles(5, 4), angles[5 * model.tokens_per_frame:], rtol=0, atol=0)


def test_rolling_cache_memory_stays_bounded():
    model = causal_model(2, window_frames=4, sink_frames=1)
    policy = CachePolicy(window_frames=4, sink_frames=1, mode="rolling")
    held = {}
    with torch.no_grad():
        for frames in (24, 96):
            cache = model.new_cache(1, policy)
            x, t = torch.randn(1, 1, 2, 8, 8, dtype=torch.float64), torch.zeros(1)
            for _ in range(frames // 2):
                model(x, t, cache=cache, write=True)
            held[frames] = cache.nbytes
            assert cache.next_frame == frames and cache.held == [0, frames - 2, frames - 1]
    assert held[96] == held[24] > 0


def test_mode_none_refuses_to_write_past_max_frames():
    model = causal_model(2)
    cache = model.new_cache(1, CachePolicy(max_frames=4))
    x, t = torch.randn(1, 1, 2, 8, 8, dtype=torch.float64), torch.zeros(1)
    with torch.no_grad():
        for _ in range(2):
            assert not cache.is_full(2)
            model(x, t, cache=cache, write=True)
        assert cache.is_full(2)
        model(x, t, cache=cache)                        # reading a full cache is fine
        with pytest.raises(ValueError, match=r"generator.cache: .*max_frames = 4.*rolling.*segment"):
            model(x, t, cache=cache, write=True)
    assert cache.next_frame == 4


def test_segment_mode_reports_full_and_resets():
    model = causal_model(2)
    cache = model.new_cache(1, CachePolicy(mode="segment", max_frames=4))
    x, t = torch.randn(1, 1, 2, 8, 8, dtype=torch.float64), torch.zeros(1)
    with torch.no_grad():
        model(x, t, cache=cache, write=True)
        model(x, t, cache=cache, write=True)
        assert cache.is_full(2) and cache.frames_held == 4
        cache.reset(start_frame=2)
        assert (cache.next_frame, cache.frames_held, cache.nbytes, cache.is_full(4)) == (2, 0, 0, False)
        model(x, t, cache=cache, write=True)
    assert cache.held == [2, 3]


def test_frames_not_divisible_by_chunk_frames_are_refused():
    model = causal_model(3)
    x = torch.randn(1, 1, 4, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"generator.chunk_frames: .*chunk_frames = 3, got 4 frames"):
        model(x, torch.zeros(1))
    with pytest.raises(ValueError, match=r"generator.chunk_frames"):
        model(x, torch.zeros(1), cache=model.new_cache(1, CachePolicy()))


@pytest.mark.parametrize(("options", "message"), [
    ({"mode": "rolling"}, r"generator.cache.window_frames: mode rolling needs a window"),
    ({"mode": "ring"}, r"generator.cache.mode: unknown mode 'ring'"),
    ({"window_frames": 0}, r"generator.cache.window_frames: must be >= 1"),
    ({"sink_frames": -1}, r"generator.cache.sink_frames"),
])
def test_cache_policy_errors_name_their_key(options, message):
    with pytest.raises(ValueError, match=message):
        CachePolicy(**options)


def test_a_window_shorter_than_a_chunk_is_refused():
    model = causal_model(3, window_frames=2)
    x = torch.randn(1, 1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"generator.cache.window_frames: 2 is shorter than chunk_frames 3"):
        model(x, torch.zeros(1))
    with pytest.raises(ValueError, match=r"generator.cache.window_frames"):
        model(x, torch.zeros(1), cache=model.new_cache(1, CachePolicy(window_frames=2, mode="rolling")))


def test_a_cache_needs_a_causal_backbone_and_its_batch():
    model = causal_model(1)
    x = torch.randn(2, 1, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"made for batch 1, got 2"):
        model(x, torch.zeros(2), cache=model.new_cache(1, CachePolicy()))
    model.causal = False
    with pytest.raises(ValueError, match=r"needs a causal backbone"):
        model(x, torch.zeros(2), cache=model.new_cache(2, CachePolicy()))
