"""A diffusers VAE as a codec (`codec: {kind: diffusers_vae, path: DIR}`): images [C, H, W] in [-1, 1] to the latents a
latent diffusion teacher models and back, loaded offline from a local folder. Latents are scaled as the diffusers
pipelines scale them, z = (E(x) - shift_factor) * scaling_factor, with both factors read from the VAE's config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from potstill.core.codec import Codec
from potstill.core.config import ConfigError
from potstill.core.pretrained import load_pretrained
from potstill.core.registry import CODECS


@dataclass
class DiffusersVAEOptions:
    """`path`: a local diffusers folder; `subfolder`: the VAE's folder in it (null: the folder itself);
    `model_class`: the diffusers class that reads it; `sample`: encode to a draw of the posterior (as latent
    diffusion training does) rather than its mean."""

    path: str = ""
    subfolder: str | None = "vae"
    model_class: str = "AutoencoderKL"
    sample: bool = False


class DiffusersVAECodec(Codec):
    """Images <-> scaled latents through a frozen diffusers VAE (each spatial side shrinks by 2^(levels - 1))."""

    def __init__(self, options: DiffusersVAEOptions) -> None:
        super().__init__()
        import diffusers

        folder = Path(options.path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"codec.path: {folder} is not a folder")
        model_class = getattr(diffusers, options.model_class, None)
        if model_class is None:
            raise ConfigError(f"codec.model_class: diffusers has no class {options.model_class!r}")
        self.vae = load_pretrained(model_class, folder, options.subfolder, "codec.path")
        config = self.vae.config
        self.options = options
        self.scaling = float(config.scaling_factor)
        self.shift = float(getattr(config, "shift_factor", None) or 0.0)
        self.factor = 2 ** (len(config.block_out_channels) - 1)
        self.data_channels, self.latent_channels = config.in_channels, config.latent_channels

    def sample_shape(self, data_shape):
        if len(data_shape) != 3 or data_shape[0] != self.data_channels:
            raise ValueError(f"codec: the VAE encodes images [{self.data_channels}, H, W], the data are "
                             f"{list(data_shape)}")
        _, height, width = data_shape
        if height % self.factor or width % self.factor:
            raise ValueError(f"codec: the VAE halves each side {self.factor.bit_length() - 1} times; the data's "
                             f"{height}x{width} is not divisible by {self.factor}")
        return self.latent_channels, height // self.factor, width // self.factor

    def data_shape(self, sample_shape):
        _, height, width = sample_shape
        return self.data_channels, height * self.factor, width * self.factor

    def encode(self, data: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(data).latent_dist
        latents = posterior.sample() if self.options.sample else posterior.mode()
        return (latents - self.shift) * self.scaling

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(samples / self.scaling + self.shift).sample


CODECS.register("diffusers_vae", DiffusersVAEOptions)(lambda options, context: DiffusersVAECodec(options))
