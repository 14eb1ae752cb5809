"""Adversarial components: discriminator heads on a Denoiser's inner features at noisy t (DMD2's GAN
on the fake score, reference §1 and §8), and the non-saturating and hinge GAN losses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from potstill.core.denoiser import Denoiser
from potstill.core.registry import ADVERSARIES

GANLoss = Literal["non_saturating", "hinge"]


def generator_gan_loss(logits_fake: torch.Tensor, kind: GANLoss) -> torch.Tensor:
    """Non-saturating softplus(-D(fake)) (DMD2) or hinge -D(fake) (LADD)."""
    if kind == "non_saturating":
        return F.softplus(-logits_fake).mean()
    return -logits_fake.mean()


def discriminator_gan_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: GANLoss) -> torch.Tensor:
    """softplus(D(fake)) + softplus(-D(real)) (DMD2), or 0.5 [relu(1 - D(real)) + relu(1 + D(fake))] (hinge)."""
    if kind == "non_saturating":
        return F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())


class FeatureHead(nn.Module):
    """A light head: per-token MLP to one logit, averaged over tokens ([B, C] or [B, N, C] features)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = rearrange(features, "b ... c -> b (...) c") if features.ndim > 2 else features[:, None]
        return reduce(self.net(tokens), "b n 1 -> b", "mean")


@dataclass
class FeatureGANOptions:
    """DMD2 defaults: heads on the fake score's last features, diffusion-GAN noise over the whole range."""

    network: Literal["fake_score", "teacher"] = "fake_score"
    layers: list[int] = field(default_factory=lambda: [-1])
    hidden: int = 256
    loss: GANLoss = "non_saturating"
    generator_weight: float = 3e-3
    discriminator_weight: float = 1e-2
    t_low: float = 0.0
    t_high: float = 1.0
    t_grid: int = 1000


class FeatureDiscriminator(nn.Module):
    """Discriminator heads on a Denoiser's features of noised inputs. Real and fake samples draw their
    own t and noise (DMD2's `--diffusion_gan`). When the network is the fake score, the discriminator
    loss also trains the fake score's trunk, as in DMD2 where the backbone is shared."""

    def __init__(self, options: FeatureGANOptions, feature_channels: list[int]) -> None:
        super().__init__()
        self.options = options
        self.heads = nn.ModuleList(FeatureHead(c, options.hidden) for c in feature_channels)

    def logits(self, network: Denoiser, x: torch.Tensor, cond) -> torch.Tensor:
        o = self.options
        t = network.schedule.sample_t(x.shape[0], o.t_low, o.t_high, o.t_grid).to(x)
        x_t = network.schedule.add_noise(x, torch.randn_like(x), t)
        features = network.features(x_t, t, cond, o.layers)
        return sum(head(f.float()) for head, f in zip(self.heads, features, strict=True)) / len(self.heads)

    def generator_loss(self, network: Denoiser, fake: torch.Tensor, cond) -> torch.Tensor:
        return generator_gan_loss(self.logits(network, fake, cond), self.options.loss)

    def discriminator_loss(self, network: Denoiser, real: torch.Tensor, real_cond, fake: torch.Tensor,
                           fake_cond) -> tuple[torch.Tensor, dict[str, float]]:
        logits_real = self.logits(network, real, real_cond)
        logits_fake = self.logits(network, fake.detach(), fake_cond)
        loss = discriminator_gan_loss(logits_real, logits_fake, self.options.loss)
        return loss, {"d_loss": loss.item(), "d_real": logits_real.mean().item(),
                      "d_fake": logits_fake.mean().item()}


def feature_channels(network: Denoiser, layers: list[int], cond) -> list[int]:
    """Probe a Denoiser once to learn the channel width of the requested feature layers."""
    x = torch.zeros(1, *network.sample_shape)
    t = torch.full((1,), network.schedule.t_at(torch.tensor(0.5)).item())
    with torch.no_grad():
        return [f.shape[-1] for f in network.features(x, t, cond, layers)]


@ADVERSARIES.register("feature_gan", FeatureGANOptions)
def build_feature_gan(options: FeatureGANOptions, context) -> FeatureDiscriminator:
    network = context.fake_score if options.network == "fake_score" else context.teacher
    if network is None or not isinstance(network, Denoiser):
        raise ValueError(f"adversary.network: {options.network!r} has no features to put a head on")
    probe_cond = context.modality.probe_condition()
    return FeatureDiscriminator(options, feature_channels(network, options.layers, probe_cond))
