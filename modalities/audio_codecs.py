"""The audio representations a teacher can model besides the waveform, as codecs (`codec.kind`): `spectrogram`,
log-power frames as long as the clip (decoded by Griffin-Lim: the phase is estimated), `mel`, log-mel frames through
torchaudio's filterbank (decoded by InverseMelScale and Griffin-Lim: lossy), and `autoencoder`, a frozen 1-D
autoencoder's latents read from a local safetensors file."""

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


def clip_of_channels(data_shape: tuple[int, ...], channels: int, codec: str) -> tuple[int, int]:
    """`clip_shape`, refused naming `codec.channels` unless the clips have the codec's channel count."""
    found, length = clip_shape(data_shape)
    if found != channels:
        raise ValueError(f"codec.channels: the {codec} codec takes {channels}-channel clips, the data have {found}")
    return found, length


def circular_stft(clips: torch.Tensor, n_fft: int, hop_length: int, window: torch.Tensor) -> torch.Tensor:
    """Complex frames [..., n_fft / 2 + 1, T / hop + 1] of clips [..., T], centred and wrapped around the clip's
    ends: the clip is read as one period, so a partial with whole periods in it has the same spectrum in every frame
    (reflected ends would give the edge frames a spectrum no clip has, which Griffin-Lim cannot match)."""
    flat = clips.reshape(-1, clips.shape[-1])
    frames = torch.stft(flat, n_fft, hop_length, window=window, center=True, pad_mode="circular", return_complex=True)
    return frames.reshape(*clips.shape[:-1], *frames.shape[-2:])


def circular_istft(frames: torch.Tensor, n_fft: int, hop_length: int, window: torch.Tensor,
                   length: int) -> torch.Tensor:
    flat = frames.reshape(-1, *frames.shape[-2:])
    clips = torch.istft(flat, n_fft, hop_length, window=window, center=True, length=length)
    return clips.reshape(*frames.shape[:-2], length)


def griffin_lim(magnitude: torch.Tensor, window: torch.Tensor, hop_length: int, length: int,
                iters: int) -> torch.Tensor:
    """Clips whose circular STFT under `window` (n_fft its length) has `magnitude`, by fast Griffin-Lim
    (Perraudin et al. 2013: each phase taken from t_n - 0.99 t_(n-1), t the frames of the last two projections)
    from zero phase. torchaudio's GriffinLim frames with reflected ends only, which caps a tone's round trip at
    purity 0.935 where circular frames reach 1.0 (measured on the tones law, 256 iterations)."""
    n_fft = len(window)
    phase = torch.polar(torch.ones_like(magnitude), torch.zeros_like(magnitude))
    previous = torch.zeros_like(phase)
    for _ in range(iters):
        frames = circular_stft(circular_istft(magnitude * phase, n_fft, hop_length, window, length), n_fft,
                               hop_length, window)
        accelerated = frames - 0.99 * previous
        previous = frames
        phase = accelerated / accelerated.abs().clamp(min=1e-16)
    return circular_istft(magnitude * phase, n_fft, hop_length, window, length)


def power_to_level(power: torch.Tensor, floor: float) -> torch.Tensor:
    """z = (log10(power + floor) - log10(floor) / 2) / (-log10(floor) / 2): silence is -1 and unit power +1."""
    centre = math.log10(floor) / 2
    return (torch.log10(power + floor) - centre) / -centre


def level_to_power(level: torch.Tensor, floor: float) -> torch.Tensor:
    centre = math.log10(floor) / 2
    return (torch.pow(10.0, level * -centre + centre) - floor).clamp(min=0)


def check_floor(floor: float) -> None:
    if not 0 < floor < 1:
        raise ConfigError(f"codec.floor: must be in (0, 1), got {floor}")


@dataclass
class SpectrogramCodecOptions:
    """Clips of `channels` channels and T samples as the log power (`power_to_level`) of `hops` + 1 Hann frames of
    the whole clip, hop T / `hops`, wrapped around its ends, over bins 0 to T / 2 - 1 (the Nyquist bin is dropped);
    `griffin_lim_iters` Griffin-Lim iterations from zero phase decode it."""

    channels: int = 1
    hops: int = 8
    floor: float = 1e-5
    griffin_lim_iters: int = 256

    def __post_init__(self) -> None:
        check_floor(self.floor)
        for key in ("channels", "hops"):
            if getattr(self, key) < 1:
                raise ConfigError(f"codec.{key}: must be at least 1, got {getattr(self, key)}")


class SpectrogramCodec(Codec):
    """Clips [C, T] <-> log-power frames [C * T / 2, hops + 1]. A frame as long as the clip resolves every bin of
    its FFT (a partial with whole periods in the clip fills its bin and the two Hann neighbours), so the round trip
    is exact but for the phase, which Griffin-Lim recovers."""

    def __init__(self, options: SpectrogramCodecOptions) -> None:
        super().__init__()
        self.options = options

    def sample_shape(self, data_shape):
        o = self.options
        channels, length = clip_of_channels(data_shape, o.channels, "spectrogram")
        if length % o.hops or length % 2:
            raise ValueError(f"codec.hops: clips of {length} samples are not {o.hops} hops of whole samples with an "
                             "even length")
        return channels * length // 2, o.hops + 1

    def data_shape(self, sample_shape):
        rows, _ = clip_shape(sample_shape)
        return self.options.channels, 2 * rows // self.options.channels

    def encode(self, data: torch.Tensor) -> torch.Tensor:
        length = data.shape[-1]
        window = torch.hann_window(length, device=data.device)
        frames = circular_stft(data, length, length // self.options.hops, window)
        power = frames[..., :-1, :].abs().square() / window.square().sum()
        return rearrange(power_to_level(power, self.options.floor), "n c m f -> n (c m) f")

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        o = self.options
        length = 2 * samples.shape[-2] // o.channels
        power = level_to_power(rearrange(samples, "n (c m) f -> n c m f", c=o.channels), o.floor)
        power = torch.cat([power, torch.zeros_like(power[..., :1, :])], dim=-2)
        window = torch.hann_window(length, device=samples.device, dtype=power.dtype)
        return griffin_lim((power * window.square().sum()).sqrt(), window, length // o.hops, length,
                           o.griffin_lim_iters)


@dataclass
class MelCodecOptions:
    """torchaudio's mel filterbank (HTK scale, `n_mels` bands from `f_min` to `f_max`, null: half of `sample_rate`)
    over a Hann STFT wrapped around the clip's ends, as log power (`power_to_level`); decoded through
    InverseMelScale's least squares (lossy where a band spans several bins) and `griffin_lim_iters` Griffin-Lim
    iterations from zero phase."""

    sample_rate: int | None = None
    n_fft: int = 1024
    hop_length: int = 128
    n_mels: int = 256
    f_min: float = 0.0
    f_max: float | None = None
    floor: float = 1e-5
    griffin_lim_iters: int = 256

    def __post_init__(self) -> None:
        if self.sample_rate is None:
            raise ConfigError("codec.sample_rate: the mel codec needs the clips' sample rate in Hz")
        check_floor(self.floor)


class MelCodec(Codec):
    """Clips [C, T] <-> log-mel frames [C * n_mels, T / hop_length + 1] (T a multiple of `hop_length`)."""

    def __init__(self, options: MelCodecOptions) -> None:
        super().__init__()
        o = self.options = options
        self.mel_scale = torchaudio.transforms.MelScale(o.n_mels, o.sample_rate, o.f_min, o.f_max, o.n_fft // 2 + 1)
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            o.n_fft // 2 + 1, n_mels=o.n_mels, sample_rate=o.sample_rate, f_min=o.f_min, f_max=o.f_max,
            driver="gelsd")
        self.register_buffer("window", torch.hann_window(o.n_fft), persistent=False)

    def sample_shape(self, data_shape):
        channels, length = clip_shape(data_shape)
        if length % self.options.hop_length:
            raise ValueError(f"codec.hop_length: {self.options.hop_length} does not divide the clip length {length}")
        if self.options.n_fft > length:
            raise ValueError(f"codec.n_fft: {self.options.n_fft} is longer than the clips ({length} samples)")
        return channels * self.options.n_mels, length // self.options.hop_length + 1

    def data_shape(self, sample_shape):
        bands, frames = clip_shape(sample_shape)
        return bands // self.options.n_mels, (frames - 1) * self.options.hop_length

    def encode(self, data: torch.Tensor) -> torch.Tensor:
        o = self.options
        power = circular_stft(data, o.n_fft, o.hop_length, self.window).abs().square() / self.window.square().sum()
        return rearrange(power_to_level(self.mel_scale(power), o.floor), "n c m f -> n (c m) f")

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        o = self.options
        mel = level_to_power(rearrange(samples, "n (c m) f -> n c m f", m=o.n_mels), o.floor)
        power = self.inverse_mel(mel).clamp(min=0) * self.window.square().sum()
        length = (samples.shape[-1] - 1) * o.hop_length
        return griffin_lim(power.sqrt(), self.window.to(power.dtype), o.hop_length, length, o.griffin_lim_iters)


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
        o = self.options
        _, length = clip_of_channels(data_shape, o.channels, "autoencoder")
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


CODECS.register("spectrogram", SpectrogramCodecOptions)(
    lambda options, context: SpectrogramCodec(options))
CODECS.register("mel", MelCodecOptions)(lambda options, context: MelCodec(options))
CODECS.register("autoencoder", AutoencoderCodecOptions)(lambda options, context: AutoencoderCodec(options))
