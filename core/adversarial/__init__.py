"""Adversarial components: GAN losses and R1 / approximate R1, discriminator heads on a Denoiser's
features at noisy t (`feature_gan`, `ladd`, `apt`), ARC's relativistic one (`arc`) and one on a frozen encoder
(`add`). Importing this package registers them."""

from potstill.core.adversarial import encoder, feature, losses, relativistic

__all__ = ["encoder", "feature", "losses", "relativistic"]
