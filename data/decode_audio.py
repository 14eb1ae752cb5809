"""Audio clips (wav, flac, mp3, ogg) decoded from the shard's bytes with soundfile, then resampled with
torchaudio, mixed to mono or made stereo, and cropped or zero-padded to a fixed length: [C, L] in the
source's [-1, 1] amplitude."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF
from einops import rearrange

from potstill.data.decode_video import Start, clip_start
from potstill.data.fields import BadSample

AUDIO_FIELDS = ["wav", "flac", "mp3", "ogg"]


@dataclass
class AudioDecodeOptions:
    """`length` is in samples at `sample_rate`; with `pad: false` shorter clips are skipped, not padded."""

    sample_rate: int = 16000
    channels: int = 1
    length: int = 16000
    start: Start = "random"
    pad: bool = True
    fields: list[str] = field(default_factory=lambda: list(AUDIO_FIELDS))


def match_channels(wave: torch.Tensor, channels: int) -> torch.Tensor:
    """[C_src, L] -> [channels, L]: mono is the mean of the source channels; stereo repeats a mono source."""
    if channels == 1:
        return wave.mean(dim=0, keepdim=True)
    if wave.shape[0] == 1:
        return wave.expand(channels, -1).clone()
    if wave.shape[0] < channels:
        raise BadSample("channels", f"{wave.shape[0]} channels cannot make {channels}")
    return wave[:channels]


@dataclass
class AudioDecoder:
    """Bytes of one audio file -> [channels, length] float32."""

    options: AudioDecodeOptions

    def __call__(self, data: bytes, rng: np.random.Generator) -> torch.Tensor:
        o = self.options
        try:
            samples, source_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
            raise BadSample("undecodable", f"audio: {error}") from None
        wave = rearrange(torch.from_numpy(samples), "l c -> c l")
        needed = math.ceil(o.length * source_rate / o.sample_rate)
        if wave.shape[1] < needed and not o.pad:
            raise BadSample("too_short", f"audio has {wave.shape[1]} samples at {source_rate} Hz, a clip needs "
                                         f"{needed}")
        first = clip_start(max(wave.shape[1] - needed, 0), o.start, rng)
        wave = wave[:, first : first + needed]
        if source_rate != o.sample_rate:
            wave = AF.resample(wave, source_rate, o.sample_rate)
        wave = match_channels(wave, o.channels)[:, : o.length]
        return torch.nn.functional.pad(wave, (0, o.length - wave.shape[1]))
