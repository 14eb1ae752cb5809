"""Codecs: a frozen map between the data a modality saves and scores (waveforms, images, clips) and the samples a
teacher models (mel frames, latents). With a `codec` section, real data is encoded on the fly wherever it enters
(`train-teacher`, adversaries, noised-real generators) and samples are decoded before saving and scoring, so the
Distiller, objectives and adversaries work on the teacher's samples unchanged (stable-audio's pretransform)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import nn

from potstill.core import registry as reg
from potstill.core.config import Component, load_component
from potstill.core.modality import Modality
from potstill.core.real_data import RealData


class Codec(nn.Module, ABC):
    """Frozen encoder and decoder; `encode` and `decode` work on batches [N, *shape]."""

    @abstractmethod
    def encode(self, data: torch.Tensor) -> torch.Tensor:
        """Data [N, *data_shape] to samples [N, *sample_shape(data_shape)]."""

    @abstractmethod
    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """Samples back to data (exactly or approximately, as the codec's docstring says)."""

    @abstractmethod
    def sample_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape `encode` gives one datum of `data_shape` (an error naming the key when it cannot)."""

    @abstractmethod
    def data_shape(self, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape `decode` gives one sample of `sample_shape`."""

    @property
    def device(self) -> torch.device:
        """Where the codec's weights (or buffers) are; inputs are moved there and results back."""
        tensor = next(self.parameters(), None)
        tensor = tensor if tensor is not None else next(self.buffers(), None)
        return tensor.device if tensor is not None else torch.device("cpu")


def build_codec(component: Component | None, context: Any, teacher: Any = None) -> Codec | None:
    """The configured codec; with no `codec` section, the one recorded in a trained teacher's file (its samples are
    that codec's), else None. The codec is frozen."""
    if component is None and teacher is not None:
        component = load_component("codec", (getattr(teacher, "metadata", None) or {}).get("codec"), reg.CODECS)
    if component is None:
        return None
    codec = reg.CODECS.get(component.kind, "codec.kind").builder(component.options, context)
    if teacher is not None:
        check_codec_fits(codec, tuple(teacher.sample_shape), component.kind)
    return codec.eval().requires_grad_(False)


def check_codec_fits(codec: Codec, teacher_shape: tuple[int, ...], kind: str) -> None:
    """Refuse a codec whose samples are not the teacher's: decoding the teacher's sample shape and encoding it
    again must give it back (a waveform teacher under a mel codec does not)."""
    data_shape = codec.data_shape(teacher_shape)
    if codec.sample_shape(data_shape) != teacher_shape:
        raise ValueError(f"codec.kind: the teacher's samples are {list(teacher_shape)}, which codec {kind!r} does not "
                         "make from any data; a teacher trained through a codec records it in its file (leave "
                         "codec null), another needs the codec it was trained with, or none")


class EncodedRealData(RealData):
    """A real-data stream whose samples are encoded by `codec` as they are drawn; state and counters are the
    stream's own."""

    def __init__(self, source: RealData, codec: Codec) -> None:
        self.source, self.codec = source, codec
        self.splits_by_rank = source.splits_by_rank

    @torch.no_grad()
    def next(self, n: int):
        """The samples come back on the codec's device (the engine's), where every caller moves them anyway."""
        data, cond = self.source.next(n)
        return self.codec.encode(data.to(self.codec.device).float()), cond

    def state_dict(self) -> dict:
        return self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state)

    def metrics(self) -> dict[str, float]:
        return self.source.metrics()

    def report(self) -> dict:
        return self.source.report()

    def __getattr__(self, name: str):
        if name in ("source", "codec"):
            raise AttributeError(name)
        return getattr(self.source, name)


def encoded_real_data(source: RealData, codec: Codec) -> RealData:
    """The stream as the teacher's samples: encoded as drawn, unless its samples are the codec's already (latents
    stored by `potstill data encode`)."""
    return source if source.in_codec_space else EncodedRealData(source, codec)


class EncodedModality(Modality):
    """The data's modality seen through a codec: inputs are noise in the codec's sample shape with the data's
    conditions; saving and scoring decode first. Every other attribute is the data modality's."""

    def __init__(self, data_modality: Modality, codec: Codec) -> None:
        self.data_modality, self.codec = data_modality, codec
        self.sample_shape = codec.sample_shape(tuple(data_modality.sample_shape))
        self.sample_formats = data_modality.sample_formats
        self.data_range = None

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.data_modality.sample_shape)

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.codec.decode(samples.to(self.codec.device).float()).to(samples.device)

    def draw_inputs(self, n: int, generator: torch.Generator | None = None):
        _, cond = self.data_modality.draw_inputs(n, generator)
        return torch.randn(n, *self.sample_shape, generator=generator), cond

    def to_data_range(self, samples: torch.Tensor) -> torch.Tensor:
        return self.data_modality.to_data_range(self.decode(samples))

    def save_samples(self, samples: torch.Tensor, cond, path: Path) -> Path:
        return self.data_modality.save_samples(self.decode(samples), cond, path)

    def evaluate(self, samples: torch.Tensor, cond) -> dict[str, float]:
        return self.data_modality.evaluate(self.decode(samples), cond)

    def evaluate_data(self, data: torch.Tensor, cond) -> dict[str, float]:
        return self.data_modality.evaluate(data, cond)

    def headline_metric(self) -> str:
        return self.data_modality.headline_metric()

    def __getattr__(self, name: str):
        if name in ("data_modality", "codec"):
            raise AttributeError(name)
        return getattr(self.data_modality, name)
