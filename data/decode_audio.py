"""Audio clips (wav, flac, mp3, ogg) decoded from the shard's bytes with soundfile, then resampled with
torchaudio, mixed to mono or made stereo, and cropped or zero-padded to a fixed length: [C, L] in the
source's [-1, 1] amplitude. Rate, channels and length default to the run's samples."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF
from einops import rearrange

from potstill.data.decode_video import Start, clip_start
from potstill.data.fields import BadSample, RefusedSample

AUDIO_FIELDS = ["wav", "flac", "mp3", "ogg"]
FALLBACK = {"sample_rate": 16000, "channels": 1, "length": 16000}     # with no run to take them from
KEY = "real_data.audio"


@dataclass
class AudioDecodeOptions:
    """`length` is in samples at `sample_rate`; null rate, channels and length are the run's (its samples [C, T] at
    the modality's rate). A clip shorter than the length is zero-padded (`short: pad`), skipped and counted
    (`skip`) or stops the run naming its file (`error`). `resample: false` stops at a file of another rate."""

    sample_rate: int | None = None
    channels: int | None = None
    length: int | None = None
    start: Start = "random"
    short: Literal["pad", "skip", "error"] = "pad"
    resample: bool = True
    fields: list[str] = field(default_factory=lambda: list(AUDIO_FIELDS))

    def for_samples(self, sample_shape: tuple[int, ...] | None = None,
                    sample_rate: int | None = None) -> AudioDecodeOptions:
        """Null settings filled from the run's samples [C, T] and rate (else FALLBACK); one that disagrees with the
        run is an error naming it."""
        run = {}
        if sample_shape is not None and len(sample_shape) == 2:
            run = {"channels": int(sample_shape[0]), "length": int(sample_shape[1])}
        if sample_rate is not None:
            run["sample_rate"] = int(sample_rate)
        filled = {}
        for name, fallback in FALLBACK.items():
            given = getattr(self, name)
            if given is not None and name in run and given != run[name]:
                raise ValueError(f"{KEY}.{name}: {given}, but the run's samples have {run[name]}; leave it null")
            filled[name] = given if given is not None else run.get(name, fallback)
            if filled[name] < 1:
                raise ValueError(f"{KEY}.{name}: must be at least 1, got {filled[name]}")
        return replace(self, **filled)


def match_channels(wave: torch.Tensor, channels: int) -> torch.Tensor:
    """[C_src, L] -> [channels, L]: mono is the mean of the source channels; stereo repeats a mono source."""
    if channels == 1:
        return wave.mean(dim=0, keepdim=True)
    if wave.shape[0] == 1:
        return wave.expand(channels, -1).clone()
    if wave.shape[0] < channels:
        raise RefusedSample(f"{KEY}.channels: {channels}, and this file has {wave.shape[0]} channels (mono files "
                            "are repeated, others cannot make more)")
    return wave[:channels]


@dataclass
class AudioDecoder:
    """Bytes of one audio file -> [channels, length] float32."""

    options: AudioDecodeOptions

    def __post_init__(self) -> None:
        self.options = self.options.for_samples()

    def __call__(self, data: bytes, rng: np.random.Generator) -> torch.Tensor:
        o = self.options
        try:
            samples, source_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
            raise BadSample("undecodable", f"audio: {error}") from None
        wave = rearrange(torch.from_numpy(samples), "l c -> c l")
        if source_rate != o.sample_rate and not o.resample:
            raise RefusedSample(f"{KEY}.resample: false, and this file is at {source_rate} Hz, not {o.sample_rate}")
        needed = math.ceil(o.length * source_rate / o.sample_rate)
        if wave.shape[1] < needed and o.short != "pad":
            detail = f"audio has {wave.shape[1]} samples at {source_rate} Hz, a clip needs {needed}"
            if o.short == "error":
                raise RefusedSample(f"{KEY}.short: error, and {detail}")
            raise BadSample("too_short", detail)
        first = clip_start(max(wave.shape[1] - needed, 0), o.start, rng)
        wave = wave[:, first : first + needed]
        if source_rate != o.sample_rate:
            wave = AF.resample(wave, source_rate, o.sample_rate)
        wave = match_channels(wave, o.channels)[:, : o.length]
        return torch.nn.functional.pad(wave, (0, o.length - wave.shape[1]))
