"""The audio representations a teacher can model besides the waveform, as codecs (`codec.kind`): `mel`, log-mel
frames from torchaudio (decoded by InverseMelScale and Griffin-Lim: lossy, the phase is estimated), and
`autoencoder`, a frozen 1-D autoencoder's latents read from a local safetensors file."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchaudio
from einops import rearrange

from potstill.backbones.audio_autoencoder import AudioAutoencoder, AudioAutoencoderOptions
from potstill.core.codec import Codec
from potstill.core.config import ConfigError
from potstill.core.registry import CODECS
from potstill.core.weights import load_frozen


def clip_shape(data_shape: tuple[int, ...]) -> tuple[int, int]:
    if len(data_shape) != 2:
        raise ValueError(f"codec: audio codecs take clips [C, T], got samples of shape {data_shape}")
    return int(data_shape[0]), int(data_shape[1])


@dataclass
class MelCodecOptions:
    """torchaudio's MelSpectrogram (power, window-normalised, centred frames) at `sample_rate`, as
    z = (log10(mel + floor) - log10(floor) / 2) / (-log10(floor) / 2), so silence is -1 and unit power +1;
    `griffin_lim_iters` Griffin-Lim iterations from a fixed start decode it."""

    sample_rate: int | None = None
    n_fft: int = 1024
    hop_length: int = 128
    n_mels: int = 256
    f_min: float = 0.0
    f_max: float | None = None
    floor: float = 1e-5
    griffin_lim_iters: int = 64

    def __post_init__(self) -> None:
        if self.sample_rate is None:
            raise ConfigError("codec.sample_rate: the mel codec needs the clips' sample rate in Hz")
        if not 0 < self.floor < 1:
            raise ConfigError(f"codec.floor: must be in (0, 1), got {self.floor}")


class MelCodec(Codec):
    """Clips [C, T] <-> log-mel frames [C * n_mels, T / hop_length + 1] (T a multiple of `hop_length`)."""

    def __init__(self, options: MelCodecOptions) -> None:
        super().__init__()
        o = self.options = options
        self.mel = torchaudio.transforms.MelSpectrogram(
            o.sample_rate, n_fft=o.n_fft, hop_length=o.hop_length, f_min=o.f_min, f_max=o.f_max, n_mels=o.n_mels,
            power=2.0, normalized=True)
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            o.n_fft // 2 + 1, n_mels=o.n_mels, sample_rate=o.sample_rate, f_min=o.f_min, f_max=o.f_max,
            driver="gelsd")
        self.window_energy = float(torch.hann_window(o.n_fft).square().sum())
        self.log_centre = math.log10(o.floor) / 2

    def sample_shape(self, data_shape):
        channels, length = clip_shape(data_shape)
        if length % self.options.hop_length:
            raise ValueError(f"codec.hop_length: {self.options.hop_length} does not divide the clip length {length}")
        if self.options.n_fft // 2 >= length:
            raise ValueError(f"codec.n_fft: {self.options.n_fft} is too long for clips of {length} samples (its half "
                             "pads each end)")
        return channels * self.options.n_mels, length // self.options.hop_length + 1

    def data_shape(self, sample_shape):
        bands, frames = clip_shape(sample_shape)
        return bands // self.options.n_mels, (frames - 1) * self.options.hop_length

    def encode(self, data: torch.Tensor) -> torch.Tensor:
        level = torch.log10(self.mel(data) + self.options.floor)
        return rearrange((level - self.log_centre) / -self.log_centre, "n c m f -> n (c m) f")

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        o = self.options
        level = rearrange(samples, "n (c m) f -> n c m f", m=o.n_mels) * -self.log_centre + self.log_centre
        mel = (torch.pow(10.0, level) - o.floor).clamp(min=0)
        power = self.inverse_mel(mel).clamp(min=0) * self.window_energy
        griffin_lim = torchaudio.transforms.GriffinLim(
            o.n_fft, n_iter=o.griffin_lim_iters, hop_length=o.hop_length, power=2.0,
            length=(samples.shape[-1] - 1) * o.hop_length, rand_init=False).to(samples.device)
        return griffin_lim(power)


@dataclass
class AutoencoderCodecOptions(AudioAutoencoderOptions):
    """`path`: the autoencoder's weights (safetensors, as `scripts/train_audio_codec.py` writes them);
    latents are divided by `scale` (stable-audio's pretransform scale)."""

    path: str | None = None
    scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.path is None:
            raise ConfigError("codec.path: the autoencoder codec needs its weights file")
        if self.scale <= 0:
            raise ConfigError(f"codec.scale: must be greater than 0, got {self.scale}")


class AutoencoderCodec(Codec):
    """Clips [channels, T] <-> latents [latent_channels, T / hop] through a frozen AudioAutoencoder."""

    def __init__(self, options: AutoencoderCodecOptions) -> None:
        super().__init__()
        self.options = options
        architecture = AudioAutoencoderOptions(options.channels, options.latent_channels, options.hidden, options.hop)
        self.autoencoder = load_frozen(AudioAutoencoder(architecture), options.path, "codec.path", "codec")

    def sample_shape(self, data_shape):
        channels, length = clip_shape(data_shape)
        o = self.options
        if channels != o.channels:
            raise ValueError(f"codec.channels: the autoencoder takes {o.channels}-channel clips, the data have "
                             f"{channels}")
        if length % o.hop:
            raise ValueError(f"codec.hop: {o.hop} does not divide the clip length {length}")
        return o.latent_channels, length // o.hop

    def data_shape(self, sample_shape):
        _, frames = clip_shape(sample_shape)
        return self.options.channels, frames * self.options.hop

    def encode(self, data: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(data) / self.options.scale

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(samples * self.options.scale)


CODECS.register("mel", MelCodecOptions)(lambda options, context: MelCodec(options))
CODECS.register("autoencoder", AutoencoderCodecOptions)(lambda options, context: AutoencoderCodec(options))
