"""The `image` modality: DiT teachers (the embedded digits teacher, or a local DiT checkpoint),
class-conditional noise and labels, PNG grids, and the Frechet digits distance with per-class recall."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import save_image

from potstill.backbones.digits_classifier import DigitsClassifier
from potstill.backbones.dit import PRESETS, DiT, DiTOptions
from potstill.core.config import from_dict
from potstill.core.denoiser import Denoiser, Prediction
from potstill.core.modality import Modality, noise_and_conditions, prompt_embeddings
from potstill.core.registry import MODALITIES, TEACHERS
from potstill.core.schedules import build_schedule
from potstill.core.teacher_file import teacher_build_options
from potstill.core.weights import load_frozen, read_metadata, resolve_weights
from potstill.core.zero_build import build_with_weights
from potstill.data.digits import load_digits_tensors
from potstill.modalities.frechet import frechet_distance, gaussian_stats


@dataclass
class DiTTeacherOptions:
    """A DiT teacher. Values left unset are read from the checkpoint's metadata (embedded weights carry
    them); for a public DiT-XL/2 file give `architecture: DiT-XL/2, schedule: vp_linear, prediction: eps`."""

    checkpoint: str = "embedded:digits_teacher"
    architecture: str | None = None
    dit: dict[str, Any] | None = None
    schedule: str | None = None
    schedule_options: dict[str, Any] | None = None
    prediction: Prediction | None = None
    sigma_data: float | None = None


def recorded_dit_options(meta: dict[str, Any], checkpoint: str) -> dict[str, Any]:
    """The DiT options a file records: under `dit` (the embedded weights) or, in a teacher file written by
    `potstill train-teacher`, under `backbone_options` when its backbone is a DiT."""
    if "backbone" not in meta:
        return dict(meta.get("dit", {}))
    if meta["backbone"] != "dit":
        raise ValueError(f"teacher.checkpoint: {checkpoint} holds a {meta['backbone']!r} teacher, not a DiT; "
                         "set teacher.kind: trained")
    return dict(meta.get("backbone_options", {}))


def build_dit_denoiser(options: DiTTeacherOptions, partition: Any | None = None,
                      dtype: torch.dtype | None = None, budget: int | None = None) -> Denoiser:
    """The DiT teacher a weights file names, its weights streamed in tensor by tensor; with `partition` (an
    engine's, under ZeRO-3) split across ranks as they arrive, in `dtype`; refused before it is read when its
    share exceeds `budget` bytes."""
    path = resolve_weights(options.checkpoint, "teacher.checkpoint")
    meta = read_metadata(path, "teacher.checkpoint")
    dit_values = recorded_dit_options(meta, options.checkpoint)
    if options.architecture is not None:
        if options.architecture not in PRESETS:
            raise ValueError(f"teacher.architecture: unknown {options.architecture!r}; valid: {', '.join(PRESETS)}")
        dit_values |= PRESETS[options.architecture]
    dit_values |= options.dit or {}
    dit_options = from_dict(DiTOptions, dit_values, "teacher.dit")
    backbone = build_with_weights(lambda: DiT(dit_options), path, "teacher.checkpoint", options.checkpoint, "DiT",
                                  partition, dtype, budget)
    schedule_name = options.schedule or meta.get("schedule", "edm")
    schedule_options = options.schedule_options if options.schedule_options is not None else meta.get(
        "schedule_options", {})
    schedule = build_schedule(schedule_name, schedule_options, "teacher.schedule")
    prediction = options.prediction or meta.get("prediction", "edm")
    sigma_data = options.sigma_data if options.sigma_data is not None else meta.get("sigma_data", 0.5)
    shape = (dit_options.in_channels, dit_options.input_size, dit_options.input_size)
    denoiser = Denoiser(backbone, schedule, prediction, sigma_data, shape, dit_options.num_classes)
    if "backbone" in meta:
        denoiser.metadata = meta
    return denoiser


@TEACHERS.register("dit", DiTTeacherOptions)
def build_dit_teacher(options: DiTTeacherOptions, context) -> Denoiser:
    return build_dit_denoiser(options, **teacher_build_options(context))


def load_classifier(path: str) -> DigitsClassifier:
    """The scoring classifier from `modality.classifier`; every error names that key."""
    return load_frozen(DigitsClassifier(), path, "modality.classifier", "digits classifier")


@dataclass
class ImageOptions:
    """`classifier` scores samples (Frechet distance in its features, per-class recall); null: no scores.
    `prompts` (a text file, one prompt a line, or a list) makes the inputs text-conditioned: prompts drawn
    uniformly, embedded by the run's text_encoder (once, then cached)."""

    classifier: str | None = "embedded:digits_classifier"
    grid_columns: int = 16
    prompts: str | list[str] | None = None


def is_labels(cond) -> bool:
    return isinstance(cond, torch.Tensor) and not cond.is_floating_point()


class ImageModality(Modality):
    """Images [C, H, W] in [-1, 1]; class labels drawn uniformly when the teacher is class-conditional, or
    prompt embeddings when prompts are configured."""

    def __init__(self, options: ImageOptions, teacher: Denoiser, text_encoder=None,
                 shape: tuple[int, ...] | None = None) -> None:
        """`shape`: one image's [C, H, W] (the teacher's sample shape unless a codec decodes its samples)."""
        self.options = options
        self.sample_shape = tuple(shape or teacher.sample_shape)
        self.num_classes = teacher.num_classes
        self.prompts = prompt_embeddings(options.prompts, teacher, text_encoder)
        self.classifier = load_classifier(options.classifier) if options.classifier else None
        self._reference = None

    def draw_inputs(self, n, generator=None):
        return noise_and_conditions(n, self.sample_shape, self.num_classes, self.prompts, generator)

    sample_formats = (".png",)
    data_range = (-1.0, 1.0)

    def save_samples(self, samples, cond, path: Path) -> Path:
        path = path.with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        if is_labels(cond):
            samples = samples[torch.argsort(cond, stable=True)]
        save_image((samples.clamp(-1, 1) + 1) / 2, path, nrow=self.options.grid_columns, padding=1)
        return path

    def reference_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._reference is None:
            images, _ = load_digits_tensors()
            with torch.no_grad():
                self._reference = gaussian_stats(self.classifier(images)[1])
        return self._reference

    def evaluate(self, samples, cond) -> dict[str, float]:
        if self.classifier is None:
            return {}
        with torch.no_grad():
            logits, features = self.classifier(samples.float().clamp(-1, 1))
        mu, cov = gaussian_stats(features)
        metrics = {"fdd": frechet_distance(mu, cov, *self.reference_stats())}
        if is_labels(cond):
            predicted = logits.argmax(1)
            recalls = [float((predicted[cond == c] == c).float().mean()) for c in range(self.num_classes)
                       if (cond == c).any()]
            metrics |= {"class_recall_mean": sum(recalls) / len(recalls), "class_recall_min": min(recalls)}
        return metrics

    def headline_metric(self) -> str:
        return "fdd"


MODALITIES.register("image", ImageOptions)(
    lambda options, context: ImageModality(options, context.teacher, context.text_encoder,
                                           getattr(context, "data_shape", None)))
