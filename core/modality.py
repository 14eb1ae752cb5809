"""What the core needs from a modality: what a sample is, how generator inputs and conditions are
drawn, how samples are saved and scored. Implementations live in `potstill.modalities`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch

FOLDER = "/"        # a `sample_formats` entry: `save_samples` to a path without suffix writes a folder


def noise_and_labels(n: int, sample_shape: tuple[int, ...], num_classes: int,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Standard normal noise [n, *sample_shape] and class labels drawn uniformly (None when unconditional)."""
    noise = torch.randn(n, *sample_shape, generator=generator)
    return noise, (torch.randint(num_classes, (n,), generator=generator) if num_classes else None)


def noise_and_conditions(n: int, sample_shape: tuple[int, ...], num_classes: int, prompts: torch.Tensor | None,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Noise with class labels, or with prompt embeddings drawn uniformly from `prompts` when there are some."""
    if prompts is None:
        return noise_and_labels(n, sample_shape, num_classes, generator)
    noise = torch.randn(n, *sample_shape, generator=generator)
    return noise, prompts[torch.randint(len(prompts), (n,), generator=generator)]


def read_prompts(prompts: str | list[str]) -> list[str]:
    """`modality.prompts`: a list, or a text file of one prompt a line."""
    if isinstance(prompts, list):
        found = [p for p in prompts if p.strip()]
    else:
        path = Path(prompts).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"modality.prompts: {path} does not exist")
        found = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not found:
        raise ValueError(f"modality.prompts: {prompts!r} holds no prompt")
    return found


def prompt_embeddings(prompts: str | list[str] | None, teacher, text_encoder) -> torch.Tensor | None:
    """Embeddings of `modality.prompts` ([P, D], or [P, L, D] token sequences), checked against the teacher's text
    conditioning; None without prompts."""
    if prompts is None:
        return None
    if text_encoder is None:
        raise ValueError("modality.prompts: prompts need a text encoder; set the run's text_encoder section")
    text_dim = teacher_text_dim(teacher)
    if text_dim != text_encoder.dim:
        raise ValueError(f"modality.prompts: the teacher takes text embeddings of width {text_dim}, the text encoder "
                         f"makes {text_encoder.dim}")
    return text_encoder.encode(read_prompts(prompts))


def teacher_text_dim(teacher) -> int:
    """The width of the text embeddings a teacher's backbone takes (0: it takes none)."""
    backbone = getattr(teacher, "backbone", None)
    return getattr(backbone, "text_dim", 0) or getattr(getattr(backbone, "options", None), "text_dim", 0) or 0


class Modality(ABC):
    sample_shape: tuple[int, ...]
    sample_formats: tuple[str, ...] = ()     # file suffixes `save_samples` writes for a person to look at
    data_range: tuple[float, float] | None = None    # the range real samples lie in (images: -1, 1)

    @abstractmethod
    def draw_inputs(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, object]:
        """Generator input noise [n, *sample_shape] and the matching conditions (or None)."""

    @property
    def data_shape(self) -> tuple[int, ...]:
        """The shape of one real datum (what real data decodes to): the sample shape, unless a codec encodes it."""
        return tuple(self.sample_shape)

    def to_data_range(self, samples: torch.Tensor) -> torch.Tensor:
        """Samples as the data they imitate (clamped to its range, for bounded data); unbounded data as is."""
        return samples.clamp(*self.data_range) if self.data_range is not None else samples

    def probe_condition(self):
        """A condition for a batch of one, used to probe network shapes."""
        return self.draw_inputs(1, torch.Generator().manual_seed(0))[1]

    @abstractmethod
    def save_samples(self, samples: torch.Tensor, cond, path: Path) -> Path:
        """Write samples for a person to look at at `path` (its suffix one of `sample_formats`, or none for the
        modality's usual view); returns the file written. Nothing else is written beside it."""

    @abstractmethod
    def evaluate(self, samples: torch.Tensor, cond) -> dict[str, float]:
        """Quality metrics of samples drawn with the given conditions."""

    def evaluate_data(self, data: torch.Tensor, cond) -> dict[str, float]:
        """Quality metrics of samples already turned into data (`to_data_range`), so a timed decode is not redone."""
        return self.evaluate(data, cond)

    def noise_source(self, generator) -> torch.nn.Module | None:
        """The noise objectives add in place of i.i.d. normal noise for this generator's samples (text-to-3D's
        multi-view consistent noise); None: i.i.d."""
        return None

    def generator_metrics(self, generator) -> dict[str, float]:
        """Metrics read from the generator itself rather than its samples (a 3-D field's surface)."""
        return {}

    def headline_metric(self) -> str:
        """The metric a table sorts by (lower is better)."""
        return "swd"
