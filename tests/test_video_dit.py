"""Video DiT: shapes, DiT-style zero init, per-frame adaLN (c_noise [B] or [B, F]), causal vs bidirectional
attention with the same weights, the features hook, and the Denoiser around it with per-frame flow times."""

import copy
from dataclasses import replace

import pytest
import torch

from potstill.backbones.video_dit import VideoDiT, VideoDiTOptions, rotate, rotation
from potstill.core.causal import CachePolicy
from potstill.core.denoiser import Denoiser
from potstill.core.registry import BACKBONES
from potstill.core.schedules import FlowSchedule
from potstill.core.tensors import per_sample

TINY = VideoDiTOptions(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=2, num_heads=2,
                       num_classes=3)


def randomized(options: VideoDiTOptions = TINY, seed: int = 0) -> VideoDiT:
    """A float64 VideoDiT with random weights (the zero init makes every output 0)."""
    torch.manual_seed(seed)
    model = VideoDiT(options).double()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model


def video(batch: int = 2, frames: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, frames, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_registered_with_dit_style_names_and_zero_init():
    model = BACKBONES.get("video_dit").builder(TINY)
    names = set(model.state_dict())
    assert {"x_embedder.proj.weight", "t_embedder.mlp.0.weight", "y_embedder.embedding_table.weight",
            "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight", "blocks.1.mlp.fc1.weight",
            "blocks.1.adaLN_modulation.1.weight", "final_layer.linear.weight",
            "final_layer.adaLN_modulation.1.weight"} <= names
    assert not any("pos_embed" in name for name in names)             # RoPE only
    assert model.rope.parts == (8, 4, 4)                               # head_dim 16: frames 8, rows 4, columns 4
    out = model(video().float(), torch.rand(2) * 1000, torch.tensor([0, 2]))
    assert out.shape == (2, 1, 6, 8, 8) and not out.any()             # adaLN-Zero: the untrained net outputs 0


def test_any_frame_count_and_null_condition():
    model = randomized()
    for frames in (1, 5, 9):
        assert model(video(frames=frames), torch.zeros(2)).shape == (2, 1, frames, 8, 8)
    assert model.null_condition(torch.tensor([0, 1])).tolist() == [3, 3]
    assert not model.null_condition(torch.ones(2, 4)).any()


def test_shared_times_as_b_or_bf_agree_and_each_frame_has_its_own_modulation():
    model = randomized()
    x, y = video(), torch.tensor([0, 1])
    t = torch.tensor([100.0, 700.0], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), model(x, t[:, None].expand(2, 6), y), rtol=0, atol=1e-12)
        c = model.frame_embedding(torch.tensor([[0.0, 500.0]]), torch.tensor([1]), 1, 2)
        assert c.shape == (1, 2, 32) and not torch.allclose(c[:, 0], c[:, 1])
        model.causal = True                                          # one frame per chunk: the past can't see t
        per_frame = t[:, None].repeat(1, 6)
        later = per_frame.clone()
        later[:, -1] = 900.0
        before, after = model(x, per_frame, y), model(x, later, y)
    assert torch.equal(before[:, :, :-1], after[:, :, :-1])
    assert not torch.allclose(before[:, :, -1], after[:, :, -1])


def test_causal_outputs_ignore_later_chunks_and_bidirectional_do_not():
    model = randomized()
    x, t, y = video(), 1000 * torch.rand(2, 6, dtype=torch.float64), torch.tensor([2, 0])
    changed = x.clone()
    changed[:, :, 4:] += 1.0                                         # chunk j = 2 of 2-frame chunks
    with torch.no_grad():
        bidirectional = model(x, t, y), model(changed, t, y)
        model.causal, model.chunk_frames = True, 2
        causal = model(x, t, y), model(changed, t, y)
    assert torch.equal(causal[0][:, :, :4], causal[1][:, :, :4])
    assert not torch.allclose(causal[0][:, :, 4:], causal[1][:, :, 4:])
    assert not torch.allclose(bidirectional[0][:, :, :4], bidirectional[1][:, :, :4])


def test_a_causal_student_copies_the_bidirectional_teacher():
    teacher = randomized()
    student = VideoDiT(replace(TINY, causal=True, chunk_frames=6)).double()
    student.load_state_dict(teacher.state_dict(), strict=True)
    copied = copy.deepcopy(teacher)
    copied.causal, copied.chunk_frames = True, 3
    assert set(copied.state_dict()) == set(teacher.state_dict())
    x, t, y = video(), 1000 * torch.rand(2, 6, dtype=torch.float64), torch.tensor([1, 2])
    with torch.no_grad():
        reference = teacher(x, t, y)
        torch.testing.assert_close(student(x, t, y), reference, rtol=0, atol=1e-12)    # the clip is one chunk
        assert not torch.allclose(copied(x, t, y)[:, :, :3], reference[:, :, :3])      # two chunks: masked


def test_features_hook():
    model = randomized()
    out, feats = model(video(frames=3), torch.zeros(2), torch.tensor([0, 1]), features=[0, -1])
    assert out.shape == (2, 1, 3, 8, 8)
    assert [f.shape for f in feats] == [(2, 3 * 4, 32)] * 2


def test_activation_checkpointing_keeps_the_gradients():
    grads = []
    for recompute in (False, True):
        model = randomized()
        model.activation_checkpointing = recompute
        model(video(frames=2), torch.zeros(2), torch.tensor([0, 1])).square().sum().backward()
        grads.append(model.blocks[0].attn.qkv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_per_sample_broadcasts_per_frame_times_on_videos():
    x = torch.zeros(2, 1, 3, 4, 4)
    assert per_sample(torch.ones(2, 3), x).shape == (2, 1, 3, 1, 1)
    assert per_sample(torch.ones(2), x).shape == (2, 1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"per-frame values \[2, 3\] need a video"):
        per_sample(torch.ones(2, 3), torch.zeros(2, 1, 4, 4))


def test_flow_denoiser_with_per_frame_times():
    model = randomized()
    denoiser = Denoiser(model, FlowSchedule(), prediction="flow", sample_shape=(1, 6, 8, 8), num_classes=3)
    x_t, y = video(), torch.tensor([0, 2])
    t = torch.rand(2, 6, dtype=torch.float64) * 0.8 + 0.1
    with torch.no_grad():
        u = model(x_t, 1000 * t, y)
        torch.testing.assert_close(denoiser.x0(x_t, t, y), x_t - t[:, None, :, None, None] * u)
        for frame in range(6):                                       # each frame's own x0 = x_t - t u
            expected = x_t[:, :, frame] - t[:, frame, None, None, None] * u[:, :, frame]
            torch.testing.assert_close(denoiser.x0(x_t, t, y)[:, :, frame], expected)
        torch.testing.assert_close(denoiser.x0(x_t, t[:, 0], y), x_t - t[:, :1, None, None, None] * model(
            x_t, 1000 * t[:, 0], y))


def test_denoiser_passes_the_cache_through_and_refuses_guidance_with_it():
    model = randomized()
    model.causal, model.chunk_frames = True, 2
    denoiser = Denoiser(model, FlowSchedule(), prediction="flow", num_classes=3)
    cache = model.new_cache(2, CachePolicy())
    x_t, y, t = video(frames=2), torch.tensor([0, 1]), torch.full((2, 2), 0.5, dtype=torch.float64)
    with torch.no_grad():
        denoiser.x0(x_t, t, y, cache=cache, write=True)
        assert cache.next_frame == 2
        streamed = denoiser.flow(x_t, t, y, cache=cache)
        torch.testing.assert_close(streamed, model(x_t, 1000 * t, y, cache=cache))
        with pytest.raises(ValueError, match=r"guidance: 3.0 doubles the batch"):
            denoiser.x0(x_t, t, y, guidance=3.0, cache=cache)
        denoiser.x0(x_t, t, y, guidance=3.0)                     # without a cache guidance works


def test_edm_preconditioning_takes_per_frame_times():
    denoiser = Denoiser(randomized(), FlowSchedule(), prediction="edm", num_classes=3)
    x_t, y, t = video(), torch.tensor([0, 2]), torch.tensor([0.3, 0.7], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(denoiser.x0(x_t, t[:, None].expand(2, 6), y), denoiser.x0(x_t, t, y))


def test_rope_turns_each_interleaved_pair_as_a_complex_number_by_its_angle():
    """RoFormer (Su et al. 2021, eq. 34): the pair (x1, x2) is x1 + i x2, multiplied by exp(i theta)."""
    angles = torch.rand(6, 4, dtype=torch.float64) * 10
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    pairs = torch.view_as_complex(x.reshape(2, 3, 6, 4, 2).contiguous())
    expected = torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)).reshape(2, 3, 6, 8)
    torch.testing.assert_close(rotate(x, rotation(angles, torch.float64)), expected, rtol=1e-12, atol=1e-12)
