"""ARC's adversary (Novack et al. 2025, "Fast Text-to-Audio Generation with Adversarial Post-Training"; anchor:
stable-audio-tools `training/arc.py::ARCTrainingWrapper`, `models/arc.py::ConvDiscriminator`). A trainable copy
of the teacher read at block `disc_layer`, a 1-D convolutional head giving one score per position, and
relativistic losses: each generated sample is paired with the real sample its generator input was noised from,
both noised with the same t and noise and scored under the same condition, position by position:

    D: softplus(-(S_real - S_fake)),    G: softplus(S_real - S_fake)      (means over batch and positions)

The contrastive term (D only) scores the same noised real under conditions that are not its own, as fakes:
softplus(-(S_real - S_mismatched)); text conditions are rolled by one across the batch as the anchor does, class
labels are deranged (each moved to another class), since rolling labels can leave a clip its own class. Optional
approximate R1 and R2 (the anchor's current form: sigma 0.01, weight 100, their mean); off as in the anchor."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from potstill.core import parallel
from potstill.core.adversarial.feature import feature_shapes, resolve_network
from potstill.core.adversarial.losses import approximate_r1_penalty
from potstill.core.denoiser import Denoiser
from potstill.core.registry import ADVERSARIES
from potstill.core.time_draws import TimeOptions, draw_times

HEAD_BLOCKS = 4              # the anchor's stride-2 convolutions
HEAD_KERNEL = 4


def head_blocks(tokens: int) -> int:
    """The anchor's four stride-2 blocks, fewer where the layer is too short for them to leave the final
    convolution its 4 positions (9 spectrogram frames take one); 0 where not even one fits."""
    blocks = 0
    while blocks < HEAD_BLOCKS and tokens // 2 ** (blocks + 1) >= HEAD_KERNEL:
        blocks += 1
    return blocks


class ConvHead(nn.Module):
    """ARC's `conv` discriminator head: `blocks` [Conv1d(k4, s2, p1), GroupNorm, SiLU] blocks over the tokens of a
    layer (the anchor's four, see `head_blocks`) and a final Conv1d(k4) to one channel:
    [B, N, C] -> scores [B, N / 2^blocks - 3]."""

    def __init__(self, channels: int, hidden: int | None = None, blocks: int = HEAD_BLOCKS) -> None:
        super().__init__()
        hidden = hidden or channels
        groups = math.gcd(32, hidden)
        layers: list[nn.Module] = []
        for i in range(blocks):
            layers += [nn.Conv1d(channels if i == 0 else hidden, hidden, HEAD_KERNEL, stride=2, padding=1),
                       nn.GroupNorm(groups, hidden), nn.SiLU()]
        self.blocks = blocks
        self.net = nn.Sequential(*layers, nn.Conv1d(hidden if blocks else channels, 1, HEAD_KERNEL))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return rearrange(self.net(rearrange(tokens, "b n c -> b c n")), "b 1 p -> b p")


def mismatched_conditions(cond: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Conditions none of which is its sample's own: class labels each moved by a random 1..K-1 classes (a
    derangement of the labels), embeddings rolled by one across the batch (ARC's prompt roll)."""
    if not cond.is_floating_point():
        if num_classes < 2:
            raise ValueError("adversary.contrastive_weight: the contrastive term needs at least two classes")
        offset = parallel.draw_local(lambda n: torch.randint(1, num_classes, (n,)), cond.shape[0]).to(cond.device)
        return (cond + offset) % num_classes
    if cond.shape[0] < 2:
        raise ValueError("adversary.contrastive_weight: rolling text conditions needs a micro-batch of at least 2")
    return cond.roll(1, dims=0)


def relativistic_d_loss(scores_real: torch.Tensor, scores_fake: torch.Tensor) -> torch.Tensor:
    """mean softplus(-(S_real - S_fake)) over pairs and positions."""
    return F.softplus(scores_fake - scores_real).mean()


def relativistic_g_loss(scores_real: torch.Tensor, scores_fake: torch.Tensor) -> torch.Tensor:
    """mean softplus(S_real - S_fake) over pairs and positions."""
    return F.softplus(scores_real - scores_fake).mean()


@dataclass
class ARCOptions(TimeOptions):
    """`disc_layer`: the teacher-copy block whose output the head reads (ARC's `dit_hidden_layer`); `head_hidden`:
    the head's width (null: the layer's). Noise times for real and fake are drawn uniformly in [0, 1) by default
    (the anchor's `noise_dist.discriminator`). `contrastive_weight`: the contrastive term's weight (0 turns it off).
    `penalty_weight`: approximate R1 on reals and R2 on fakes, mean (D(x + sigma n) - D(x))^2, weighted (0 = off)."""

    disc_layer: int = -2
    head_hidden: int | None = None
    t_low: float = 0.0
    t_high: float = 1.0
    t_grid: int = 0
    contrastive_weight: float = 1.0
    penalty_weight: float = 0.0
    penalty_sigma: float = 0.01
    generator_weight: float = 1.0
    discriminator_weight: float = 1.0


class RelativisticDiscriminator(nn.Module):
    """ARC's discriminator; its losses take paired real and generated samples (same rows, same conditions)."""

    trains_fake_score = False
    pairs_real = True       # the generator loss needs the real samples the generator's inputs were made from

    def __init__(self, options: ARCOptions, network: Denoiser, channels: int, num_classes: int,
                 head_depth: int = HEAD_BLOCKS) -> None:
        super().__init__()
        self.options = options
        self.network_copy = network
        self.head = ConvHead(channels, options.head_hidden, head_depth)
        self.num_classes = num_classes

    def scores_at(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """[B, P] scores of noisy inputs."""
        (features,) = self.network_copy.features(x_t, t, cond, [self.options.disc_layer])
        return self.head(features.to(self.head.net[0].weight.dtype))      # the head in its own (float) precision

    def noised_pair(self, real: torch.Tensor, fake: torch.Tensor):
        """Real and fake noised with one draw of t and noise: (real_t, fake_t, t)."""
        t = draw_times(self.options, self.network_copy.schedule, real.shape[0]).to(real)
        noise = parallel.randn_like(real)
        schedule = self.network_copy.schedule
        return schedule.add_noise(real, noise, t), schedule.add_noise(fake, noise, t), t

    def generator_loss(self, fake: torch.Tensor, cond, real=None) -> torch.Tensor:
        if real is None:
            raise ValueError("adversary.kind: arc pairs each generated sample with the real one its input came from; "
                             "the generator must train on real inputs (generator.inputs: real)")
        real_t, fake_t, t = self.noised_pair(real[0], fake)
        return relativistic_g_loss(self.scores_at(real_t, t, cond), self.scores_at(fake_t, t, cond))

    def penalty(self, x_t: torch.Tensor, t: torch.Tensor, cond, scores: torch.Tensor) -> torch.Tensor:
        """Mean over samples and positions of (D(x_t + sigma n) - D(x_t))^2 (the core's approximate R1)."""
        return approximate_r1_penalty(lambda x: self.scores_at(x, t, cond), x_t, self.options.penalty_sigma,
                                      logits=scores)

    def discriminator_loss(self, real: torch.Tensor, real_cond, fake: torch.Tensor,
                           fake_cond) -> tuple[torch.Tensor, dict[str, float]]:
        o = self.options
        real_t, fake_t, t = self.noised_pair(real, fake.detach())
        scores_real = self.scores_at(real_t, t, real_cond)
        scores_fake = self.scores_at(fake_t, t, fake_cond)
        loss = relativistic_d_loss(scores_real, scores_fake)
        metrics = {"d_loss": loss.item(), "d_real": scores_real.mean().item(), "d_fake": scores_fake.mean().item()}
        if o.contrastive_weight:
            scores_other = self.scores_at(real_t, t, mismatched_conditions(real_cond, self.num_classes))
            contrastive = relativistic_d_loss(scores_real, scores_other)
            loss = loss + o.contrastive_weight * contrastive
            metrics["d_contrastive"] = contrastive.item()
        if o.penalty_weight:
            penalty = 0.5 * (self.penalty(real_t, t, real_cond, scores_real)
                             + self.penalty(fake_t, t, fake_cond, scores_fake))
            loss = loss + o.penalty_weight * penalty
            metrics["d_penalty"] = penalty.item()
        return loss, metrics


@ADVERSARIES.register("arc", ARCOptions)
def build_relativistic_discriminator(options: ARCOptions, context) -> RelativisticDiscriminator:
    network = resolve_network("teacher_copy", context)
    probe_cond = context.modality.probe_condition()
    if options.contrastive_weight and probe_cond is None:
        raise ValueError("adversary.contrastive_weight: the contrastive term scores real samples under other "
                         "conditions, and this model is unconditional; set it to 0")
    ((_, tokens, channels),) = feature_shapes(network, [options.disc_layer], probe_cond)
    depth = head_blocks(tokens)
    if depth == 0:
        raise ValueError(f"adversary.kind: arc's conv head needs at least {2 * HEAD_KERNEL} tokens at layer "
                         f"{options.disc_layer}; the network gives {tokens} (use a longer sample or a smaller patch)")
    return RelativisticDiscriminator(options, network, channels, int(getattr(network, "num_classes", 0) or 0),
                                     depth)
