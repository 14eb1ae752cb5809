"""A diffusers VAE as a codec (`codec: {kind: diffusers_vae, path: DIR}`): images [C, H, W] (AutoencoderKL) or clips
[C, F, H, W] (AutoencoderKLWan) in [-1, 1] to the latents a latent diffusion teacher models and back, loaded offline
from a local folder. Latents are normalised as the diffusers pipelines normalise them, z = (E(x) - shift) * scale:
AutoencoderKL's `shift_factor` and `scaling_factor`, Wan's per-channel `latents_mean` and 1 / `latents_std`."""

from __future__ import annotations

import json
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
    `model_class`: the diffusers class that reads it (null: its config's `_class_name`); `sample`: encode to a draw
    of the posterior (as latent diffusion training does) rather than its mean."""

    path: str = ""
    subfolder: str | None = "vae"
    model_class: str | None = None
    sample: bool = False


def config_class_name(folder: Path, key: str) -> str:
    """The `_class_name` a diffusers model folder's config.json names (errors name `key`)."""
    config = folder / "config.json"
    if not config.is_file():
        raise ConfigError(f"{key}.path: no config.json in {folder}; set {key}.subfolder")
    name = json.loads(config.read_text()).get("_class_name")
    if name is None:
        raise ConfigError(f"{key}.model_class: {config} names no _class_name; set the diffusers class")
    return name


class DiffusersVAECodec(Codec):
    """Images or clips <-> normalised latents through a frozen diffusers VAE: each spatial side shrinks by
    2^(levels - 1); a Wan VAE's clips of 1 + k T frames become 1 + k latent frames (T = 2^temporal downsamplings)."""

    def __init__(self, options: DiffusersVAEOptions) -> None:
        super().__init__()
        import diffusers

        folder = Path(options.path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"codec.path: {folder} is not a folder")
        name = options.model_class or config_class_name(folder / (options.subfolder or ""), "codec")
        model_class = getattr(diffusers, name, None)
        if model_class is None:
            raise ConfigError(f"codec.model_class: diffusers has no class {name!r}")
        self.vae = load_pretrained(model_class, folder, options.subfolder, "codec.path")
        config = self.vae.config
        self.options = options
        self.video = hasattr(config, "temperal_downsample")
        if self.video:
            shift, scale = torch.tensor(config.latents_mean), 1 / torch.tensor(config.latents_std)
            self.factor, self.temporal = 2 ** (len(config.dim_mult) - 1), 2 ** sum(config.temperal_downsample)
            self.data_channels, self.latent_channels = config.in_channels, config.z_dim
            if len(shift) != self.latent_channels:
                raise ConfigError(f"codec.path: the VAE's latents_mean has {len(shift)} entries for "
                                  f"{self.latent_channels} latent channels")
        else:
            channels = config.latent_channels
            shift = torch.full((channels,), float(getattr(config, "shift_factor", None) or 0.0))
            scale = torch.full((channels,), float(config.scaling_factor))
            self.factor, self.temporal = 2 ** (len(config.block_out_channels) - 1), 1
            self.data_channels, self.latent_channels = config.in_channels, channels
        self.register_buffer("shift", shift, persistent=False)
        self.register_buffer("scale", scale, persistent=False)

    def _per_channel(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.to(like).reshape(1, -1, *[1] * (like.ndim - 2))

    def sample_shape(self, data_shape):
        rank = 4 if self.video else 3
        if len(data_shape) != rank or data_shape[0] != self.data_channels:
            layout = "clips [{}, F, H, W]" if self.video else "images [{}, H, W]"
            raise ValueError(f"codec: the VAE encodes {layout.format(self.data_channels)}, the data are "
                             f"{list(data_shape)}")
        *frames, height, width = data_shape[1:]
        if height % self.factor or width % self.factor:
            raise ValueError(f"codec: the VAE halves each side {self.factor.bit_length() - 1} times; the data's "
                             f"{height}x{width} is not divisible by {self.factor}")
        if frames and (frames[0] - 1) % self.temporal:
            raise ValueError(f"codec: the VAE keeps the first frame and shrinks the rest {self.temporal} times; "
                             f"{frames[0]} frames is not 1 + a multiple of {self.temporal}")
        latent_frames = [1 + (frames[0] - 1) // self.temporal] if frames else []
        return self.latent_channels, *latent_frames, height // self.factor, width // self.factor

    def data_shape(self, sample_shape):
        *frames, height, width = sample_shape[1:]
        data_frames = [1 + (frames[0] - 1) * self.temporal] if frames else []
        return self.data_channels, *data_frames, height * self.factor, width * self.factor

    def encode(self, data: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(data).latent_dist
        latents = posterior.sample() if self.options.sample else posterior.mode()
        return (latents - self._per_channel(self.shift, latents)) * self._per_channel(self.scale, latents)

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        latents = samples / self._per_channel(self.scale, samples) + self._per_channel(self.shift, samples)
        return self.vae.decode(latents).sample


CODECS.register("diffusers_vae", DiffusersVAEOptions)(lambda options, context: DiffusersVAECodec(options))
