"""scikit-learn's bundled 8x8 handwritten digits (no download) as images in [-1, 1], and a
resumable real-sample stream of them for discriminators."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from einops import rearrange

from potstill.core.real_data import RealData
from potstill.core.registry import DATASETS


@cache
def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as ([N, 1, 8, 8] in [-1, 1], labels [N])."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0 * 2 - 1
    return rearrange(images, "n h w -> n 1 h w"), torch.tensor(bunch.target, dtype=torch.long)


class RealSampleStream(RealData):
    """Endless reshuffled epochs over an in-memory dataset, with a state that resumes it exactly."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, seed: int) -> None:
        self.images, self.labels = images, labels
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(len(images), generator=self.generator)
        self.position = 0

    def next(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        picks = []
        while n > 0:
            if self.position == len(self.order):
                self.order = torch.randperm(len(self.images), generator=self.generator)
                self.position = 0
            take = self.order[self.position : self.position + n]
            picks.append(take)
            self.position += len(take)
            n -= len(take)
        index = torch.cat(picks)
        return self.images[index], (self.labels[index] if self.labels is not None else None)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"], state["position"]


@dataclass
class DigitsDataOptions:
    conditional: bool = True


@DATASETS.register("digits", DigitsDataOptions)
def build_digits_stream(options: DigitsDataOptions, context) -> RealSampleStream:
    images, labels = load_digits_tensors()
    return RealSampleStream(images, labels if options.conditional else None, context.config.train.seed + 1)


DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def export_digits(folder: Path) -> int:
    """The 1797 digits as a folder the packer reads: `digit-NNNN.png` (8-bit grey) with its label
    (`.cls`) and a caption (`.txt`, "a handwritten digit seven")."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = load_digits_tensors()
    pixels = ((images[:, 0] + 1) / 2 * 255).round().to(torch.uint8).numpy()
    for index, (image, label) in enumerate(zip(pixels, labels.tolist(), strict=True)):
        stem = folder / f"digit-{index:04d}"
        Image.fromarray(image, mode="L").save(stem.with_suffix(".png"))
        stem.with_suffix(".cls").write_text(str(label))
        stem.with_suffix(".txt").write_text(f"a handwritten digit {DIGIT_NAMES[label]}")
    return len(pixels)


DIGITS_SHARD_PATTERN = "runs/data/digits/digits-%06d.tar"    # what digits_dmd2.yaml and digits_apt.yaml read


def pack_digits(pattern: str = DIGITS_SHARD_PATTERN, maxcount: int = 300):
    """The digits exported and packed into shards (6 of 300 samples by default), as a user would with
    `potstill data digits` and `potstill data pack`."""
    import tempfile

    from potstill.data.pack import pack

    with tempfile.TemporaryDirectory() as folder:
        export_digits(Path(folder))
        return pack(Path(folder), pattern, maxcount=maxcount)
