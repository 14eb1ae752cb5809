"""SiDA (Zhou et al. 2025; reference §3): SiD plus an adversarial term whose discriminator is the fake
score's own encoder, logits = the channel mean of one layer's features (no extra head).

Critic: one sigma ~ the schedule's DSM draw and one noise shared by fake and real samples;
lambda(sigma) ||D_fake - x||^2 + lsd mean(lambda) [BCE(real, 1) + BCE(fake, 0)] / 2 with batch-mean BCEs.
Generator: 0.5 (SiD + lsg_gan C H W BCE_mean(clamp(logit, +-10), 1) sum_i 1 / wf_i / batch), so the
GAN gradient of every sample is scaled by the batch's mean of 1 / wf (as the code does), not its own."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from potstill.core import parallel
from potstill.core.denoiser import Denoiser
from potstill.core.objectives.sid import SiD, SiDOptions
from potstill.core.registry import OBJECTIVES


@dataclass
class SiDAOptions(SiDOptions):
    alpha: float = 1.0
    layer: int = -1
    gan_scale: float = 0.01
    discriminator_scale: float = 1.0
    logit_clamp: float = 10.0


def encoder_logits(fake: Denoiser, x_t: torch.Tensor, t: torch.Tensor, cond, layer: int) -> torch.Tensor:
    """The channel mean of the fake score's features at `layer`: one logit per token (or per sample)."""
    return fake.features(x_t, t, cond, [layer])[0].float().mean(-1)


class SiDA(SiD):
    needs_real_data = True

    def generator_loss(self, x, cond, teacher: Denoiser, fake: Denoiser | None, adversary=None):
        o = self.options
        sid = self.sid_term(x, cond, teacher, fake)
        logits = encoder_logits(fake, sid.x_t, sid.t, cond, o.layer).clamp(-o.logit_clamp, o.logit_clamp)
        bce = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        gan = x[0].numel() * bce * (1 / sid.wf).sum() / x.shape[0]
        loss = 0.5 * (sid.loss + o.gan_scale * gan)
        return loss, sid.metrics | {"sida_gan": gan.item()}

    def fake_score_loss(self, x, cond, fake: Denoiser, real=None):
        o = self.options
        schedule = fake.schedule
        real_x, real_cond = real
        x = x.detach()
        t = parallel.draw_local(schedule.sample_dsm_t, x.shape[0]).to(x)
        noise = parallel.randn_like(x)
        dsm = self.reduce_fake_loss(fake.dsm_loss(x, cond, guidance=self.fake_training_guidance, t=t, eps=noise), x)
        x_t = schedule.add_noise(x, noise, t)
        real_t = schedule.add_noise(real_x, noise, t)
        logits_real = encoder_logits(fake, real_t, t, real_cond, o.layer)
        logits_fake = encoder_logits(fake, x_t, t, cond, o.layer)
        bce = (F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
               + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))) / 2
        discriminator = o.discriminator_scale * schedule.dsm_weight(t).mean() * bce
        return dsm + discriminator, {"fake_dsm": dsm.item(), "sida_d": bce.item(),
                                     "d_real": logits_real.mean().item(), "d_fake": logits_fake.mean().item()}


OBJECTIVES.register("sida", SiDAOptions)(lambda options, context: SiDA(options))
