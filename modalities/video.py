"""The `video` modality: clips [C, F, H, W] from a video teacher, class labels drawn uniformly, MP4 grids and PNG
strips, and scores against the moving-digits law the teacher was trained on (read from its metadata)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torchvision.utils import make_grid, save_image

from potstill.backbones.video_classifier import VideoClassifier
from potstill.core.config import ConfigError, from_dict
from potstill.core.modality import Modality, noise_and_conditions, prompt_embeddings
from potstill.core.registry import MODALITIES
from potstill.core.teacher_file import teacher_data
from potstill.core.weights import load_frozen
from potstill.data.moving_digits import MovingDigitsOptions, moving_digit_clips
from potstill.modalities.frechet import frechet_distance, gaussian_stats
from potstill.modalities.image import is_labels
from potstill.modalities.mp4 import write_mp4
from potstill.modalities.video_scores import (
    RANGE_FRAMES,
    class_changes,
    class_kept,
    class_recalls,
    law_scores,
    unit_frames,
)

MIN_SIDE = 64               # the mp4 upscales clips (nearest, by an integer factor) to at least this many pixels
PAD_VALUE = 0.5             # grey lines between frames and clips (the background is black)
REFERENCE_CLIPS = 1000      # real clips behind `fvd_toy`, drawn once per frame count with a fixed seed
REFERENCE_SEED = 1000
SCORE_BATCH = 250           # clips the classifier sees at once


@dataclass
class VideoOptions:
    """`classifier` (the toy video classifier's weights) gives `fvd_toy` and class recall; null: law scores
    only. `frames` overrides the teacher's frame count of the samples drawn (e.g. 48 for long streaming).
    The `.mp4` view tiles `grid_columns` clips a row and plays at `fps`; the `.png` view is one row per clip.
    `prompts` (a text file, one prompt a line, or a list) makes the inputs text-conditioned, as for images."""

    classifier: str | None = "embedded:moving_digits_classifier"
    frames: int | None = None
    grid_columns: int = 8
    fps: int = 4
    prompts: str | list[str] | None = None

    def __post_init__(self) -> None:
        for name, least in (("frames", 2), ("grid_columns", 1), ("fps", 1)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise ConfigError(f"modality.{name}: must be at least {least}, got {value}")


def law_of(teacher) -> MovingDigitsOptions | None:
    """The moving-digits law in the teacher file's `data` section, or None for a teacher trained on other data."""
    data = teacher_data(teacher, "moving_digits")
    return None if data is None else from_dict(MovingDigitsOptions, data, "teacher metadata data").resolved()


def load_video_classifier(path: str) -> VideoClassifier:
    """The scoring classifier from `modality.classifier`; every error names that key."""
    return load_frozen(VideoClassifier(), path, "modality.classifier", "video classifier")


def save_strip(samples: torch.Tensor, path: Path) -> None:
    """One row per clip, its frames left to right, 1 px grey lines between them."""
    frames = samples.shape[2]
    save_image(rearrange(unit_frames(samples), "n c f h w -> (n f) c h w"), path, nrow=frames, padding=1,
               pad_value=PAD_VALUE)


def grid_frames(samples: torch.Tensor, columns: int) -> torch.Tensor:
    """uint8 RGB frames [F, H', W', 3] of the clips tiled `columns` a row, upscaled (nearest) so a clip is at
    least MIN_SIDE pixels, with even sides (yuv420p needs them)."""
    unit = unit_frames(samples)
    factor = math.ceil(MIN_SIDE / min(unit.shape[-2:]))
    grids = torch.stack([make_grid(unit[:, :, k], nrow=columns, padding=1, pad_value=PAD_VALUE)
                         for k in range(unit.shape[2])])
    grids = grids.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    grids = F.pad(grids, (0, grids.shape[-1] % 2, 0, grids.shape[-2] % 2), value=PAD_VALUE)
    return rearrange((grids * 255).round().to(torch.uint8), "f c h w -> f h w c")


class VideoModality(Modality):
    """Clips [C, F, H, W] in [-1, 1]; class labels drawn uniformly when the teacher is class-conditional."""

    sample_formats = (".mp4", ".png")
    data_range = (-1.0, 1.0)

    def __init__(self, options: VideoOptions, teacher, shape: tuple[int, ...] | None = None, text_encoder=None
                 ) -> None:
        """`shape`: one clip's [C, F, H, W] (the teacher's sample shape unless a codec decodes its samples)."""
        shape = tuple(shape or teacher.sample_shape)
        if len(shape) != 4:
            raise ValueError(f"modality.kind: video needs a teacher whose samples are [C, F, H, W], got {shape}")
        self.options = options
        self.sample_shape = (shape[0], options.frames or shape[1], *shape[2:])
        self.num_classes = teacher.num_classes
        self.prompts = prompt_embeddings(options.prompts, teacher, text_encoder)
        self.law = law_of(teacher)
        if self.law is not None and shape[2:] != (self.law.canvas, self.law.canvas):
            raise ValueError(f"teacher: samples of {shape[2]}x{shape[3]} pixels, but its moving-digits data were "
                             f"drawn on a {self.law.canvas}x{self.law.canvas} canvas")
        if options.classifier and shape[0] != 1:
            raise ValueError(f"modality.classifier: the video classifier scores grey clips, the teacher's have "
                             f"{shape[0]} channels; set it to null")
        self.classifier = load_video_classifier(options.classifier) if options.classifier else None
        self._reference: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def draw_inputs(self, n, generator=None):
        return noise_and_conditions(n, self.sample_shape, self.num_classes, self.prompts, generator)

    def save_samples(self, samples, cond, path: Path) -> Path:
        """The `.png` strip unless `path` names `.mp4`; a suffix-less path gets `.png`."""
        if not path.suffix:
            path = path.with_suffix(".png")
        if path.suffix not in self.sample_formats:
            raise ValueError(f"{path}: video samples are written as {' or '.join(self.sample_formats)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        if is_labels(cond):
            samples = samples[torch.argsort(cond, stable=True)]
        if path.suffix == ".mp4":
            write_mp4(grid_frames(samples, self.options.grid_columns), path, self.options.fps)
        else:
            save_strip(samples, path)
        return path

    @torch.no_grad()
    def classify(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = [self.classifier(chunk.float().clamp(-1, 1)) for chunk in clips.split(SCORE_BATCH)]
        return torch.cat([o[0] for o in outputs]), torch.cat([o[1] for o in outputs])

    def reference_stats(self, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature statistics of real clips from the teacher's law with `frames` frames (cached)."""
        if frames not in self._reference:
            law = self.law
            clips, _ = moving_digit_clips(REFERENCE_CLIPS, law.canvas, frames, law.velocities,
                                          torch.Generator().manual_seed(REFERENCE_SEED), law.digits)
            self._reference[frames] = gaussian_stats(self.classify(clips)[1])
        return self._reference[frames]

    def evaluate(self, samples, cond) -> dict[str, float]:
        """Law scores when the teacher's data were moving digits; `fvd_toy` (which needs that law for its real
        clips) and class recall when a classifier is set; for clips longer than one range, `class_kept`, and with
        labels `class_recall_last` (the label's recall in the last range alone), `class_lost` and `class_corrected`."""
        metrics = law_scores(samples, self.law.velocities) if self.law is not None else {}
        if self.classifier is None:
            return metrics
        logits, features = self.classify(samples)
        if self.law is not None:
            metrics["fvd_toy"] = frechet_distance(*gaussian_stats(features), *self.reference_stats(samples.shape[2]))
        if is_labels(cond):
            metrics |= class_recalls(logits, cond, self.num_classes)
        if samples.shape[2] > RANGE_FRAMES:
            first = self.classify(samples[:, :, :RANGE_FRAMES])[0]
            last = self.classify(samples[:, :, -RANGE_FRAMES:])[0]
            metrics |= class_kept(first, last)
            if is_labels(cond):
                metrics["class_recall_last"] = class_recalls(last, cond, self.num_classes)["class_recall_mean"]
                metrics |= class_changes(first, last, cond)
        return metrics

    def headline_metric(self) -> str:
        return "fvd_toy" if self.classifier is not None and self.law is not None else "shift_residual"


MODALITIES.register("video", VideoOptions)(
    lambda options, context: VideoModality(options, context.teacher, getattr(context, "data_shape", None),
                                           getattr(context, "text_encoder", None)))
