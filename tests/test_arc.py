"""ARC's parts against independent re-implementations on identical tensors: the relativistic and contrastive
losses, the conv head, the approximate R1/R2 penalty, the label derangement, the student's noised real inputs and
ping-pong sampling (one step is the one-step x0)."""

import pytest
import torch
import torch.nn.functional as F

from potstill.backbones.dit1d import DiT1D, DiT1DOptions
from potstill.core.adversarial.relativistic import (
    ARCOptions,
    ConvHead,
    RelativisticDiscriminator,
    head_blocks,
    mismatched_conditions,
)
from potstill.core.config import ConfigError
from potstill.core.denoiser import Denoiser
from potstill.core.from_teacher import DenoiserGeneratorOptions
from potstill.core.generator import DenoiserGenerator, NoisedRealGenerator
from potstill.core.samplers import solve
from potstill.core.schedules import FlowSchedule
from potstill.core.time_draws import TimeOptions

CLASSES, LENGTH, BATCH = 4, 1024, 3


def tiny_network() -> Denoiser:
    torch.manual_seed(0)
    backbone = DiT1D(DiT1DOptions(input_size=LENGTH, patch_size=8, hidden_size=32, depth=2, num_heads=2,
                                  num_classes=CLASSES))
    for p in backbone.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return Denoiser(backbone, FlowSchedule(), "flow", 0.5, (1, LENGTH), CLASSES).double()


def discriminator(**options) -> RelativisticDiscriminator:
    torch.manual_seed(1)
    disc = RelativisticDiscriminator(ARCOptions(**options), tiny_network(), 32, CLASSES).double()
    for p in disc.head.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return disc


def head_by_hand(head: ConvHead, tokens: torch.Tensor) -> torch.Tensor:
    """The conv head written out with functional calls on its own weights."""
    layers = list(head.net)
    x = tokens.transpose(1, 2)
    for i in range(head.blocks):
        conv, norm = layers[3 * i], layers[3 * i + 1]
        x = F.silu(F.group_norm(F.conv1d(x, conv.weight, conv.bias, stride=2, padding=1), norm.num_groups,
                                norm.weight, norm.bias, norm.eps))
    return F.conv1d(x, layers[-1].weight, layers[-1].bias)[:, 0]


def scores_by_hand(disc, x_t, t, cond):
    (tokens,) = disc.network_copy.features(x_t, t, cond, [disc.options.disc_layer])
    return head_by_hand(disc.head, tokens)


def softplus_by_hand(x):
    return torch.log1p(torch.exp(x))


def batch():
    generator = torch.Generator().manual_seed(5)
    real = torch.randn(BATCH, 1, LENGTH, generator=generator, dtype=torch.float64)
    fake = torch.randn(BATCH, 1, LENGTH, generator=generator, dtype=torch.float64)
    return real, fake, torch.tensor([0, 2, 3])


def shared_draws(real):
    """t on [0, 1) and one noise for real and fake, drawn as the discriminator draws them."""
    t = FlowSchedule().t_at(torch.rand(BATCH, dtype=torch.float64)).float().double()
    return t, torch.randn_like(real)


def test_conv_head_matches_its_functional_form_and_gives_positions():
    disc = discriminator()
    tokens = torch.randn(2, 128, 32, dtype=torch.float64)
    scores = disc.head(tokens)
    assert scores.shape == (2, 128 // 16 - 3)
    assert torch.allclose(scores, head_by_hand(disc.head, tokens))


def test_a_short_layer_gets_fewer_head_blocks_and_the_same_functional_form():
    """The anchor's four stride-2 blocks from 64 tokens; 9 spectrogram frames take one, leaving one position."""
    assert [head_blocks(n) for n in (7, 8, 9, 16, 63, 64, 1000)] == [0, 1, 1, 2, 3, 4, 4]
    torch.manual_seed(2)
    head = ConvHead(32, blocks=head_blocks(9)).double()
    tokens = torch.randn(2, 9, 32, dtype=torch.float64)
    scores = head(tokens)
    assert scores.shape == (2, 1)
    assert torch.allclose(scores, head_by_hand(head, tokens))


@pytest.mark.parametrize("penalty", [0.0, 100.0])
def test_discriminator_loss_equals_an_independent_implementation(penalty):
    disc = discriminator(penalty_weight=penalty)
    real, fake, cond = batch()
    torch.manual_seed(7)
    loss, metrics = disc.discriminator_loss(real, cond, fake, cond)

    torch.manual_seed(7)
    t, noise = shared_draws(real)
    real_t, fake_t = (1 - t[:, None, None]) * real + t[:, None, None] * noise, (1 - t[:, None, None]) * fake + \
        t[:, None, None] * noise
    s_real, s_fake = scores_by_hand(disc, real_t, t, cond), scores_by_hand(disc, fake_t, t, cond)
    other = (cond + torch.randint(1, CLASSES, (BATCH,))) % CLASSES
    s_other = scores_by_hand(disc, real_t, t, other)
    expected = softplus_by_hand(-(s_real - s_fake)).mean() + softplus_by_hand(-(s_real - s_other)).mean()
    if penalty:
        r1 = (scores_by_hand(disc, real_t + 0.01 * torch.randn_like(real_t), t, cond) - s_real).pow(2).mean()
        r2 = (scores_by_hand(disc, fake_t + 0.01 * torch.randn_like(fake_t), t, cond) - s_fake).pow(2).mean()
        expected = expected + penalty * (r1 + r2) / 2
    assert torch.allclose(loss, expected, rtol=1e-10, atol=1e-12)
    assert metrics["d_contrastive"] == pytest.approx(softplus_by_hand(-(s_real - s_other)).mean().item())


def test_generator_loss_equals_an_independent_implementation_and_reaches_only_the_fake():
    disc = discriminator()
    real, fake, cond = batch()
    fake.requires_grad_(True)
    torch.manual_seed(3)
    loss = disc.generator_loss(fake, cond, (real, cond))
    torch.manual_seed(3)
    t, noise = shared_draws(real)
    mix = lambda x: (1 - t[:, None, None]) * x + t[:, None, None] * noise        # noqa: E731
    expected = softplus_by_hand(scores_by_hand(disc, mix(real), t, cond)
                                - scores_by_hand(disc, mix(fake), t, cond)).mean()
    assert torch.allclose(loss, expected, rtol=1e-10)
    (grad,) = torch.autograd.grad(loss, fake)
    assert grad.abs().sum() > 0


def test_generator_loss_without_paired_reals_names_the_fix():
    disc = discriminator()
    _, fake, cond = batch()
    with pytest.raises(ValueError, match=r"generator\.inputs: real"):
        disc.generator_loss(fake, cond)


def test_labels_are_deranged_and_embeddings_rolled():
    labels = torch.arange(CLASSES).repeat(500)
    moved = mismatched_conditions(labels, CLASSES)
    assert not (moved == labels).any()
    for c in range(CLASSES):
        assert set(moved[labels == c].tolist()) == set(range(CLASSES)) - {c}
    embeddings = torch.randn(3, 5)
    assert torch.equal(mismatched_conditions(embeddings, 0), embeddings[[2, 0, 1]])
    with pytest.raises(ValueError, match="at least two classes"):
        mismatched_conditions(torch.zeros(4, dtype=torch.long), 1)


def test_noised_real_inputs_follow_the_flow_interpolation():
    network = tiny_network()
    student = NoisedRealGenerator(network, [1.0], TimeOptions(t_low=0.0, t_high=1.0, t_grid=0))
    real, _, cond = batch()
    torch.manual_seed(11)
    out = student(real, cond)
    torch.manual_seed(11)
    t, noise = shared_draws(real)
    x_t = (1 - t[:, None, None]) * real + t[:, None, None] * noise
    velocity = network.backbone(x_t, network.schedule.c_noise(t), cond)
    assert torch.allclose(out, x_t - t[:, None, None] * velocity, rtol=1e-10)


def test_pure_noise_inputs_when_gen_t_is_one():
    network = tiny_network()
    student = NoisedRealGenerator(network, [1.0], TimeOptions(t_low=1.0, t_high=1.0, t_grid=0))
    real, _, cond = batch()
    torch.manual_seed(2)
    out = student(real, cond)
    torch.manual_seed(2)
    torch.rand(BATCH, dtype=torch.float64)
    noise = torch.randn_like(real)
    assert torch.allclose(out, network.x0(noise, torch.ones(BATCH, dtype=torch.float64), cond), rtol=1e-10)


def test_condition_dropout_drops_labels_on_generator_steps_only():
    """Under grad (the generator's own step) each label is replaced by the null class with the configured
    probability, drawn after t and before the noise; the critic's no-grad pass keeps every label."""
    network = tiny_network()
    student = NoisedRealGenerator(network, [1.0], TimeOptions(t_low=0.0, t_high=1.0, t_grid=0),
                                  condition_dropout=0.5)
    seen = []
    student.denoise = lambda x_t, t, cond: seen.append(cond) or x_t
    real = torch.zeros(400, 1, 8, dtype=torch.float64)
    cond = torch.arange(400) % CLASSES
    with torch.no_grad():
        student(real, cond)
    torch.manual_seed(4)
    student(real.requires_grad_(True), cond)
    torch.manual_seed(4)
    torch.rand(400, dtype=torch.float64)
    dropped = torch.rand(400) < 0.5
    assert torch.equal(seen[0], cond)
    assert torch.equal(seen[1], torch.where(dropped, torch.full_like(cond, CLASSES), cond))
    assert 150 < int(dropped.sum()) < 250


def test_condition_dropout_is_for_noised_real_students():
    with pytest.raises(ConfigError, match=r"generator\.condition_dropout: only a student of noised real samples"):
        DenoiserGeneratorOptions(condition_dropout=0.1)
    with pytest.raises(ConfigError, match=r"generator\.condition_dropout: must be in \[0, 1\)"):
        DenoiserGeneratorOptions(inputs="real", condition_dropout=1.0)


def test_one_pingpong_step_is_the_one_step_x0_and_more_steps_renoise():
    network = tiny_network()
    noise = torch.randn(2, 1, LENGTH, dtype=torch.float64)
    cond = torch.tensor([1, 3])
    one = solve(network, noise, torch.tensor([1.0, 0.0], dtype=torch.float64), cond, "pingpong")[0]
    assert torch.allclose(one, network.x0(noise, torch.ones(2, dtype=torch.float64), cond))
    student = DenoiserGenerator(network, [1.0])
    assert torch.allclose(student.sample(noise, cond), one)
    student.use_steps(4)
    positions = torch.tensor([1.0, 0.75, 0.5, 0.25], dtype=torch.float64)
    assert torch.allclose(student.times, FlowSchedule().t_at(positions).float())
    torch.manual_seed(4)
    four = student.sample(noise, cond)
    torch.manual_seed(4)
    x0 = network.x0(noise, torch.ones(2, dtype=torch.float64), cond)
    for t in student.times[1:].tolist():
        t = torch.full((2,), t, dtype=torch.float64)
        x0 = network.x0((1 - t[:, None, None]) * x0 + t[:, None, None] * torch.randn_like(x0), t, cond)
    assert torch.allclose(four, x0)
