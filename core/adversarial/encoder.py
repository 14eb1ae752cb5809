"""ADD's discriminator (Sauer et al. 2023; reference §8): a frozen timm ViT (DINOv2 in the paper) reads
the clean sample, and trainable heads on several of its blocks give logits, conditioned by projection
on the class or text embedding. The encoder's weights come from a local file when `checkpoint` is set
(timm loads it); without one it is randomly initialised, a frozen random feature network."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import timm
import torch
import torch.nn.functional as F
from einops import reduce, repeat
from torch import nn

from potstill.core.adversarial.losses import (
    GANLoss,
    allow_double_backward,
    discriminator_gan_loss,
    generator_gan_loss,
    r1_penalty,
    refuse_r1_on_partitions,
)
from potstill.core.registry import ADVERSARIES


@dataclass
class EncoderGANOptions:
    """Paper-level values (hinge loss, R1); the R1 weight is unverified against ADD's code (none is public)."""

    model: str = "vit_small_patch14_dinov2"
    model_options: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    layers: list[int] = field(default_factory=lambda: [2, 5, 8, 11])
    resize: int | None = None
    hidden: int = 256
    loss: GANLoss = "hinge"
    generator_weight: float = 1.0
    discriminator_weight: float = 1.0
    r1_weight: float = 1e-5
    value_range: Literal["minus_one_one", "zero_one"] = "minus_one_one"


def build_encoder(options: EncoderGANOptions, in_chans: int) -> nn.Module:
    """The frozen timm ViT; `checkpoint` is a local .safetensors/.pth file timm loads (no download)."""
    kwargs = dict(options.model_options)
    if options.checkpoint is not None:
        path = Path(options.checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"adversary.checkpoint: {path} does not exist")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    kwargs.setdefault("in_chans", in_chans)
    try:
        encoder = timm.create_model(options.model, pretrained=options.checkpoint is not None, num_classes=0, **kwargs)
    except (RuntimeError, ValueError, TypeError) as error:
        raise ValueError(f"adversary.model: timm could not build {options.model!r}: {error}") from error
    encoder = encoder.requires_grad_(False).eval()
    return allow_double_backward(encoder) if options.r1_weight else encoder


class ProjectionHead(nn.Module):
    """Per-token MLP to a hidden vector h; logit = w.h + <h, embed(cond)> / sqrt(hidden), token mean."""

    def __init__(self, channels: int, hidden: int, num_classes: int, cond_dim: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, hidden), nn.SiLU())
        self.out = nn.Linear(hidden, 1)
        self.class_embed = nn.Embedding(num_classes, hidden) if num_classes else None
        self.text_embed = nn.Linear(cond_dim, hidden) if cond_dim else None

    def forward(self, tokens: torch.Tensor, cond) -> torch.Tensor:
        h = self.trunk(tokens)
        logits = self.out(h)[..., 0]
        embed = None
        if self.class_embed is not None and cond is not None:
            embed = self.class_embed(cond)
        elif self.text_embed is not None and cond is not None:
            embed = self.text_embed(cond.float())
        if embed is not None:
            logits = logits + (h * embed[:, None]).sum(-1) / math.sqrt(h.shape[-1])
        return reduce(logits, "b n -> b", "mean")


class EncoderDiscriminator(nn.Module):
    """Frozen encoder features of clean samples at several blocks, one projection head per block."""

    trains_fake_score = False

    def __init__(self, options: EncoderGANOptions, encoder: nn.Module, num_classes: int, cond_dim: int) -> None:
        super().__init__()
        self.options = options
        self.encoder = encoder
        config = encoder.pretrained_cfg
        self.register_buffer("mean", torch.tensor(config.get("mean", (0.5,) * 3)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.get("std", (0.5,) * 3)).view(1, -1, 1, 1), persistent=False)
        channels = [f.shape[-1] for f in self.features(torch.zeros(1, encoder.patch_embed.proj.in_channels,
                                                                   *encoder.patch_embed.img_size))]
        self.heads = nn.ModuleList(ProjectionHead(c, options.hidden, num_classes, cond_dim) for c in channels)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()      # frozen: no dropout or drop-path in the feature network
        return self

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Map samples to the encoder's input: [0, 1] range, channels, size and its mean/std."""
        x = (x + 1) / 2 if self.options.value_range == "minus_one_one" else x
        in_chans = self.encoder.patch_embed.proj.in_channels
        if x.shape[1] != in_chans:
            x = repeat(x.mean(1), "b h w -> b c h w", c=in_chans)
        size = self.options.resize or self.encoder.patch_embed.img_size[0]
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        mean, std = self.mean[:, :in_chans], self.std[:, :in_chans]
        return (x - mean) / std

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder.forward_intermediates(image, indices=self.options.layers, output_fmt="NLC",
                                                  intermediates_only=True)

    def logits(self, x: torch.Tensor, cond) -> torch.Tensor:
        features = self.features(self.prepare(x.float()))
        return sum(head(f, cond) for head, f in zip(self.heads, features, strict=True)) / len(self.heads)

    def generator_loss(self, fake: torch.Tensor, cond, real=None) -> torch.Tensor:
        """The GAN loss of generated samples (`real`, the paired real samples, is not needed here)."""
        return generator_gan_loss(self.logits(fake, cond), self.options.loss)

    def discriminator_loss(self, real: torch.Tensor, real_cond, fake: torch.Tensor,
                           fake_cond) -> tuple[torch.Tensor, dict[str, float]]:
        logits_real = self.logits(real, real_cond)
        logits_fake = self.logits(fake.detach(), fake_cond)
        loss = discriminator_gan_loss(logits_real, logits_fake, self.options.loss)
        metrics = {"d_loss": loss.item(), "d_real": logits_real.mean().item(), "d_fake": logits_fake.mean().item()}
        if self.options.r1_weight:
            r1 = r1_penalty(lambda x: self.logits(x, real_cond), real)
            loss = loss + 0.5 * self.options.r1_weight * r1
            metrics["d_r1"] = r1.item()
        return loss, metrics


@ADVERSARIES.register("add", EncoderGANOptions)
def build_encoder_discriminator(options: EncoderGANOptions, context) -> EncoderDiscriminator:
    shape = context.modality.sample_shape
    if len(shape) != 3:
        raise ValueError(f"adversary.kind: 'add' reads images [C, H, W]; this modality's samples are {list(shape)}")
    probe = context.modality.probe_condition()
    is_text = probe is not None and probe.is_floating_point()
    num_classes = getattr(context.teacher, "num_classes", 0) if probe is not None and not is_text else 0
    cond_dim = probe.shape[-1] if is_text else 0
    refuse_r1_on_partitions(options.r1_weight, context.engine.partitions_trained())
    return EncoderDiscriminator(options, build_encoder(options, shape[0]), num_classes, cond_dim)
