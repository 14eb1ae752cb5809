"""Images (jpg, png, webp, anything PIL reads) to [C, H, W] tensors in [-1, 1]: converted to grey or
RGB, resized so the target fits inside (shorter side) or stretched, then cropped at the centre or at
random."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import pil_to_tensor

from potstill.data.fields import BadSample

IMAGE_FIELDS = ["jpg", "jpeg", "png", "webp"]
Resize = Literal["shorter_side", "stretch", "none"]
Crop = Literal["center", "random"]


@dataclass
class ImageDecodeOptions:
    """`size` is [H, W] or one side for both; `size` and `channels` left unset take the modality's sample shape."""

    size: list[int] | int | None = None
    channels: int | None = None
    resize: Resize = "shorter_side"
    crop: Crop = "center"
    fields: list[str] = field(default_factory=lambda: list(IMAGE_FIELDS))


def as_hw(size: list[int] | int, key: str) -> tuple[int, int]:
    pair = [size, size] if isinstance(size, int) else list(size)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{key}: expected a positive side or [height, width], got {size!r}")
    return pair[0], pair[1]


def crop_offsets(height: int, width: int, target: tuple[int, int], crop: Crop,
                 rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of a target-sized window inside a height x width frame."""
    spare_h, spare_w = height - target[0], width - target[1]
    if crop == "random":
        return int(rng.integers(spare_h + 1)), int(rng.integers(spare_w + 1))
    return spare_h // 2, spare_w // 2


def resized_shape(height: int, width: int, target: tuple[int, int], resize: Resize) -> tuple[int, int]:
    """Frame size after resizing: the smallest that covers the target at the same aspect, or the target."""
    if resize == "stretch":
        return target
    if resize == "none":
        if height < target[0] or width < target[1]:
            raise BadSample("too_small", f"{height}x{width} is smaller than {target[0]}x{target[1]} and resize is none")
        return height, width
    scale = max(target[0] / height, target[1] / width)
    return max(target[0], round(height * scale)), max(target[1], round(width * scale))


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [-1, 1]."""
    return pixels.float() / 127.5 - 1


@dataclass
class ImageDecoder:
    """Bytes of one image -> [channels, H, W] in [-1, 1]; size and channels resolved from the options."""

    options: ImageDecodeOptions
    size: tuple[int, int]
    channels: int

    def __call__(self, data: bytes, rng: np.random.Generator) -> torch.Tensor:
        try:
            image = Image.open(io.BytesIO(data))
            image = image.convert("L" if self.channels == 1 else "RGB")
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise BadSample("undecodable", f"image: {error}") from None
        height, width = resized_shape(image.height, image.width, self.size, self.options.resize)
        if (height, width) != (image.height, image.width):
            image = image.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=None)
        top, left = crop_offsets(height, width, self.size, self.options.crop, rng)
        image = image.crop((left, top, left + self.size[1], top + self.size[0]))
        return to_unit_range(pil_to_tensor(image))
