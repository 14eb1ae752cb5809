"""One webdataset sample -> (media tensor, condition): the media field decoded by its modality's
decoder, the condition read as a class label, a caption or a stored embedding."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from potstill.data.decode_audio import AudioDecoder
from potstill.data.decode_image import ImageDecoder
from potstill.data.decode_video import VideoDecoder
from potstill.data.fields import (
    TENSOR_FIELDS,
    BadSample,
    decode_tensor,
    first_present,
    read_label,
    read_text,
    read_value,
)

Media = Literal["image", "video", "audio", "tensor"]
Condition = Literal["none", "label", "caption", "embedding"]


@dataclass
class TensorDecodeOptions:
    """Precomputed tensors (latents): the fields to look for, and the tensor's name inside a safetensors field."""

    fields: list[str] = field(default_factory=lambda: list(TENSOR_FIELDS))
    tensor_name: str | None = None


@dataclass
class TensorDecoder:
    """Bytes of a stored tensor -> float32 tensor."""

    tensor_name: str | None = None

    def __call__(self, data: bytes, rng: np.random.Generator) -> torch.Tensor:
        try:
            return decode_tensor(data, self.tensor_name).float()
        except BadSample:
            raise
        except Exception as error:
            raise BadSample("undecodable", f"tensor: {error}") from None


MediaDecoder = ImageDecoder | VideoDecoder | AudioDecoder | TensorDecoder


@dataclass
class SampleDecoder:
    """Decodes a sample's media and condition; any failure is a BadSample naming the reason."""

    media: MediaDecoder
    media_fields: list[str]
    condition: Condition = "none"
    condition_field: str = ""

    def __call__(self, sample: dict, rng: np.random.Generator) -> tuple[torch.Tensor, Any]:
        x = self.media(sample[first_present(sample, self.media_fields)], rng)
        return x, self.read_condition(sample)

    def read_condition(self, sample: dict) -> Any:
        if self.condition == "label":
            return read_label(sample, self.condition_field)
        if self.condition == "caption":
            return read_text(sample, self.condition_field)
        if self.condition == "embedding":
            value = read_value(sample, self.condition_field)
            if not isinstance(value, bytes):
                return torch.tensor(value, dtype=torch.float32)
            tensor = decode_tensor(value).float()
            return tensor if tensor.ndim == 2 and len(tensor) > 1 else tensor.flatten()   # token sequences keep [L, D]
        return None


def collate(rows: list[tuple[torch.Tensor, Any]], condition: Condition) -> tuple[torch.Tensor, Any]:
    """Stack decoded rows: labels -> long [n], embeddings -> float [n, D] (sequences [n, L, D]), captions -> list of
    str."""
    x = torch.stack([row[0] for row in rows])
    conds = [row[1] for row in rows]
    if condition == "label":
        return x, torch.tensor(conds, dtype=torch.long)
    if condition == "embedding":
        return x, torch.stack(conds)
    if condition == "caption":
        return x, conds
    return x, None
