"""Discriminator heads on a Denoiser's inner features at noisy t: DMD2's head on the fake score, LADD's
heads on several frozen-teacher layers, APT's heads on a trainable copy of the teacher (reference §1,
§8). Real and fake samples draw their own t and noise (DMD2's `--diffusion_gan`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from einops import rearrange, reduce
from torch import nn

from potstill.core import parallel
from potstill.core.adversarial.losses import (
    ApproxR1Scaling,
    GANLoss,
    allow_double_backward,
    approximate_r1_penalty,
    discriminator_gan_loss,
    generator_gan_loss,
    r1_penalty,
    refuse_r1_on_partitions,
)
from potstill.core.denoiser import Denoiser
from potstill.core.registry import ADVERSARIES
from potstill.core.tensors import map_tensors, to_device
from potstill.core.time_draws import TimeOptions, TimeSampling, draw_times
from potstill.core.zero_build import is_partitioned, meta_twin

Network = Literal["fake_score", "teacher", "teacher_copy"]
HeadKind = Literal["mlp", "cross_attention"]


class FeatureHead(nn.Module):
    """A light head: per-token MLP to one logit, averaged over tokens ([B, C] or [B, N, C] features)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = rearrange(features, "b ... c -> b (...) c") if features.ndim > 2 else features[:, None]
        return reduce(self.net(tokens), "b n 1 -> b", "mean")


class CrossAttentionHead(nn.Module):
    """APT's read-out: one learned query cross-attends over the tokens of a layer, then an MLP gives the logit
    (Lin et al. 2025, Seaweed-APT), so the head weighs where in the clip to look instead of averaging."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.query = nn.Parameter(torch.randn(1, 1, channels) * channels**-0.5)
        heads = next(h for h in (4, 2, 1) if channels % h == 0)
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.out = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(rearrange(features, "b ... c -> b (...) c") if features.ndim > 2 else features[:, None])
        read, _ = self.attention(self.query.expand(tokens.shape[0], -1, -1), tokens, tokens, need_weights=False)
        return rearrange(self.out(read), "b 1 1 -> b")


HEADS: dict[str, type[nn.Module]] = {"mlp": FeatureHead, "cross_attention": CrossAttentionHead}


@dataclass
class FeatureGANOptions(TimeOptions):
    """DMD2 defaults: a head on the fake score's last features, noise positions uniform over the grid.

    `t_sampling: logit_normal` draws positions sigmoid(N(t_mean, t_std)) (LADD biases them to high
    noise). `r1_weight` adds gamma/2 ||grad D||^2 on noisy reals; `approx_r1_weight` adds APT's
    lambda (D(x + s n) - D(x))^2 with s = `approx_r1_sigma`. `head`: a per-token MLP averaged over tokens,
    or APT's cross-attention read-out with one learned query."""

    network: Network = "fake_score"
    layers: list[int] = field(default_factory=lambda: [-1])
    head: HeadKind = "mlp"
    hidden: int = 256
    loss: GANLoss = "non_saturating"
    generator_weight: float = 3e-3
    discriminator_weight: float = 1e-2
    t_low: float = 0.0
    t_high: float = 1.0
    r1_weight: float = 0.0
    approx_r1_weight: float = 0.0
    approx_r1_sigma: float = 0.01
    approx_r1_scaling: ApproxR1Scaling = "plain"
    misaligned_fakes: bool = False


def rows_differ(a, b) -> torch.Tensor:
    """[B] bool: whether row i of condition `a` differs from row i of `b` in any of their tensors."""
    if isinstance(a, dict):
        return torch.stack([rows_differ(a[k], b[k]) for k in a]).any(0)
    if isinstance(a, tuple | list):
        return torch.stack([rows_differ(x, y) for x, y in zip(a, b, strict=True)]).any(0)
    return (a != b).reshape(a.shape[0], -1).any(1)


def misaligned_pairs(real: torch.Tensor, cond) -> tuple[torch.Tensor, object]:
    """Real samples each paired with the next row's condition (the batch rolled by one), keeping the rows whose
    two conditions differ: SANA-Sprint's `misaligned_pairs_D`, which the discriminator counts as fakes."""
    shifted = map_tensors(cond, lambda c: c.roll(1, 0))
    keep = rows_differ(cond, shifted).nonzero()[:, 0]
    return real[keep], map_tensors(shifted, lambda c: c[keep])


class FeatureDiscriminator(nn.Module):
    """Heads on a Denoiser's features. When the network is the fake score, the discriminator loss also
    trains the fake score's trunk, as in DMD2 where the backbone is shared; a `teacher_copy` is this
    module's own and trains with the heads."""

    def __init__(self, options: FeatureGANOptions, network: Denoiser, feature_channels: list[int]) -> None:
        super().__init__()
        self.options = options
        if options.network == "teacher_copy":
            self.network_copy = network
        else:
            self._shared = [network]       # a list keeps the shared network out of this module's parameters
        self.heads = nn.ModuleList(HEADS[options.head](c, options.hidden) for c in feature_channels)

    @property
    def trains_fake_score(self) -> bool:
        """True when the heads read the fake score, whose trunk then learns from the discriminator loss."""
        return self.options.network == "fake_score"

    @property
    def network(self) -> Denoiser:
        return self.network_copy if self.options.network == "teacher_copy" else self._shared[0]

    def draw_times(self, n: int) -> torch.Tensor:
        return draw_times(self.options, self.network.schedule, n)

    def logits_at(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """One logit per sample at noisy input x_t, t: the heads' mean over the chosen layers."""
        features = self.network.features(x_t, t, cond, self.options.layers)
        return sum(head(f.float()) for head, f in zip(self.heads, features, strict=True)) / len(self.heads)

    def noised(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.draw_times(x.shape[0]).to(x)
        return self.network.schedule.add_noise(x, parallel.randn_like(x), t), t

    def logits(self, x: torch.Tensor, cond) -> torch.Tensor:
        return self.logits_at(*self.noised(x), cond)

    def generator_loss(self, fake: torch.Tensor, cond, real=None) -> torch.Tensor:
        """The GAN loss of generated samples (`real`, the paired real samples, is not needed here)."""
        return generator_gan_loss(self.logits(fake, cond), self.options.loss)

    def discriminator_loss(self, real: torch.Tensor, real_cond, fake: torch.Tensor,
                           fake_cond) -> tuple[torch.Tensor, dict[str, float]]:
        o = self.options
        real_t, t = self.noised(real)

        def logits_of(x_t: torch.Tensor) -> torch.Tensor:
            return self.logits_at(x_t, t, real_cond)

        logits_real = logits_of(real_t)
        logits_fake = self.logits(fake.detach(), fake_cond)
        if o.misaligned_fakes:
            wrong, wrong_cond = misaligned_pairs(real, real_cond)
            if wrong.shape[0]:
                logits_fake = torch.cat([logits_fake, self.logits(wrong, wrong_cond)])
        loss = discriminator_gan_loss(logits_real, logits_fake, o.loss)
        metrics = {"d_loss": loss.item(), "d_real": logits_real.mean().item(), "d_fake": logits_fake.mean().item()}
        if o.r1_weight:
            r1 = r1_penalty(logits_of, real_t)
            loss = loss + 0.5 * o.r1_weight * r1
            metrics["d_r1"] = r1.item()
        if o.approx_r1_weight:
            approx = approximate_r1_penalty(logits_of, real_t, o.approx_r1_sigma, o.approx_r1_scaling, logits_real)
            loss = loss + o.approx_r1_weight * approx
            metrics["d_approx_r1"] = approx.item()
        return loss, metrics


def feature_shapes(network: Denoiser, layers: list[int], cond) -> list[tuple[int, ...]]:
    """Probe a Denoiser once to learn the shapes (batch of one) of the requested feature layers; a partitioned
    (ZeRO-3) one through its meta-device twin, so that no rank gathers it whole."""
    device = None
    if any(is_partitioned(p) for p in network.parameters()):
        network, device = meta_twin(network), torch.device("meta")
        cond = to_device(cond, device)
    x = torch.zeros(1, *network.sample_shape, device=device)
    t = torch.full((1,), network.schedule.t_at(torch.tensor(0.5)).item(), device=device)
    with torch.no_grad(), torch.random.fork_rng():    # a probe draws nothing from the run's generators
        try:
            return [tuple(f.shape) for f in network.features(x, t, cond, layers)]
        except IndexError:
            depth = len(getattr(network.backbone, "blocks", []))
            raise ValueError(f"adversary: layers {layers} reach past the network's {depth} blocks; use indices in "
                             f"{-depth}..{depth - 1}") from None


def feature_channels(network: Denoiser, layers: list[int], cond) -> list[int]:
    """The channel width of each requested feature layer."""
    return [shape[-1] for shape in feature_shapes(network, layers, cond)]


def resolve_network(kind: Network, context) -> Denoiser:
    """The Denoiser whose features the heads read (`adversary.network`): the fake score, the frozen teacher, or a
    trainable copy of the teacher."""
    network = context.fake_score if kind == "fake_score" else context.teacher
    if network is None or not isinstance(network, Denoiser) or (kind != "fake_score" and network.backbone is None):
        raise ValueError(f"adversary.network: {kind!r} has no features to put a head on; "
                         "choose fake_score, teacher or teacher_copy with a network teacher")
    if kind == "teacher_copy":
        network = context.engine.trained_copy(network)
    return network


def build_feature_discriminator(options: FeatureGANOptions, context) -> FeatureDiscriminator:
    network = resolve_network(options.network, context)
    refuse_r1_on_partitions(options.r1_weight, context.engine.partitions_trained(), network)
    if options.r1_weight:
        allow_double_backward(network)
    probe_cond = context.modality.probe_condition()
    if options.misaligned_fakes and probe_cond is None:
        raise ValueError("adversary.misaligned_fakes: pairs real samples with other samples' conditions, but this "
                         "modality is unconditional; set it to false")
    return FeatureDiscriminator(options, network, feature_channels(network, options.layers, probe_cond))


ADVERSARIES.register("feature_gan", FeatureGANOptions)(build_feature_discriminator)


@dataclass
class LADDOptions(FeatureGANOptions):
    """LADD: heads on the frozen teacher's last three blocks, hinge loss, noise positions drawn
    logit-normal(1, 1), biased to high noise (Sauer et al. 2024)."""

    network: Network = "teacher"
    layers: list[int] = field(default_factory=lambda: [-3, -2, -1])
    loss: GANLoss = "hinge"
    generator_weight: float = 1.0
    discriminator_weight: float = 1.0
    t_sampling: TimeSampling = "logit_normal"
    t_mean: float = 1.0


@dataclass
class APTOptions(FeatureGANOptions):
    """APT: cross-attention read-out heads (one learned query) at three depths of a trainable copy of the
    teacher, non-saturating loss, approximate R1 with lambda = 100 and sigma = 0.01 on the noisy real input,
    perturbed at the same t and noise (Lin et al. 2025, Seaweed-APT). `approx_r1_scaling: plain` (the default,
    APT's and the third-party reimplementations' form) or `divided` by sigma (Self-Forcing's, reference §8)."""

    network: Network = "teacher_copy"
    layers: list[int] = field(default_factory=lambda: [-3, -2, -1])
    head: HeadKind = "cross_attention"
    generator_weight: float = 1.0
    discriminator_weight: float = 1.0
    approx_r1_weight: float = 100.0


ADVERSARIES.register("ladd", LADDOptions)(build_feature_discriminator)
ADVERSARIES.register("apt", APTOptions)(build_feature_discriminator)
