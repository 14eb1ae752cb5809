"""A small 1-D convolutional autoencoder for waveforms: `hop` samples become one latent frame of `latent_channels`
(the role of stable-audio's pretransform, at toy size). Trained by `scripts/train_audio_codec.py`; frozen as the
`autoencoder` codec of the audio modality."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from potstill.core.config import ConfigError


@dataclass
class AudioAutoencoderOptions:
    """`hop`: samples per latent frame (even); `hidden`: channels inside encoder and decoder."""

    channels: int = 1
    latent_channels: int = 8
    hidden: int = 64
    hop: int = 8

    def __post_init__(self) -> None:
        if self.hop < 2 or self.hop % 2:
            raise ConfigError(f"codec.hop: must be an even number of samples, at least 2, got {self.hop}")


class AudioAutoencoder(nn.Module):
    """[N, channels, T] -> [N, latent_channels, T / hop] -> [N, channels, T]; a strided convolution of two hops'
    width down, its transpose up, with one 3-tap convolution each side."""

    def __init__(self, options: AudioAutoencoderOptions) -> None:
        super().__init__()
        o = self.options = options
        self.encoder = nn.Sequential(
            nn.Conv1d(o.channels, o.hidden, 2 * o.hop, stride=o.hop, padding=o.hop // 2), nn.SiLU(),
            nn.Conv1d(o.hidden, o.hidden, 3, padding=1), nn.SiLU(),
            nn.Conv1d(o.hidden, o.latent_channels, 1))
        self.decoder = nn.Sequential(
            nn.Conv1d(o.latent_channels, o.hidden, 3, padding=1), nn.SiLU(),
            nn.ConvTranspose1d(o.hidden, o.hidden, 2 * o.hop, stride=o.hop, padding=o.hop // 2), nn.SiLU(),
            nn.Conv1d(o.hidden, o.channels, 3, padding=1))

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        return self.encoder(clips)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents)

    def reconstruction_loss(self, clips: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the round trip plus the same on the rFFT magnitudes (pitch and purity live there)."""
        out = self.decode(self.encode(clips))
        spectral = (torch.fft.rfft(out, norm="ortho").abs() - torch.fft.rfft(clips, norm="ortho").abs()).square()
        return (out - clips).square().mean() + spectral.mean()
