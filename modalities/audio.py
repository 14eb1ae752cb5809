"""The `audio` modality: clips [C, T] at the teacher's sample rate, class labels drawn uniformly, wav files (PCM 16)
and spectrogram grids, and exact scores against the tones law the teacher was trained on (read from its metadata):
pitch accuracy and spectral purity, plus FAD-toy when a toy audio classifier is set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import soundfile
import torch
from einops import rearrange
from torchvision.utils import make_grid, save_image

from potstill.backbones.audio_classifier import AudioClassifier
from potstill.core.config import ConfigError
from potstill.core.modality import FOLDER, Modality, noise_and_labels
from potstill.core.registry import MODALITIES
from potstill.core.teacher_file import teacher_data
from potstill.core.weights import load_frozen
from potstill.data.tones import TonesOptions, law_of_data, tone_clips
from potstill.modalities.audio_scores import tone_scores
from potstill.modalities.frechet import frechet_distance, gaussian_stats
from potstill.modalities.image import is_labels

REFERENCE_CLIPS = 1000      # real clips behind `fad_toy`, drawn once with a fixed seed
REFERENCE_SEED = 1000
SCORE_BATCH = 250
SPECTROGRAM_FFT = 128


@dataclass
class AudioOptions:
    """`classifier` (the toy audio classifier's weights) gives `fad_toy`; null: the exact tone scores only.
    `sample_rate` null: the teacher's (from its data). `grid_columns` clips a row in the spectrogram grid.
    A teacher of mel frames or latents (the `codec` section) is scored and saved on its decoded clips."""

    classifier: str | None = "embedded:tones_classifier"
    sample_rate: int | None = None
    grid_columns: int = 8

    def __post_init__(self) -> None:
        if self.grid_columns < 1:
            raise ConfigError(f"modality.grid_columns: must be at least 1, got {self.grid_columns}")


def tones_law_of(teacher) -> TonesOptions | None:
    """The tones law in the teacher file's `data` section, or None for a teacher trained on other data."""
    data = teacher_data(teacher, "tones")
    return None if data is None else law_of_data(data)


def check_finite(samples: torch.Tensor, path: Path) -> None:
    """Refuse to write audio holding NaN or Inf (a diverged student), naming the first bad clip."""
    bad = (~torch.isfinite(samples)).flatten(1).any(1)
    if bad.any():
        raise ValueError(f"{path}: {int(bad.sum())} of {len(samples)} generated clips hold NaN or Inf (first: clip "
                         f"{int(bad.nonzero()[0])}); nothing was written")


def write_wav(clip: torch.Tensor, path: Path, sample_rate: int) -> None:
    """One clip [C, T] as 16-bit PCM, clipped to [-1, 1]."""
    soundfile.write(str(path), rearrange(clip.float().clamp(-1, 1), "c t -> t c").numpy(), sample_rate,
                    subtype="PCM_16")


def spectrogram_grid(samples: torch.Tensor, columns: int, path: Path) -> None:
    """Log-magnitude spectrograms (low frequencies at the bottom), one tile a clip, each scaled to its own range."""
    window = torch.hann_window(SPECTROGRAM_FFT)
    mono = samples.float().mean(1)
    magnitude = torch.stft(mono, SPECTROGRAM_FFT, SPECTROGRAM_FFT // 4, window=window, return_complex=True).abs()
    level = (magnitude + 1e-6).log10().flip(1)
    low = level.amin((1, 2), keepdim=True)
    tiles = (level - low) / (level.amax((1, 2), keepdim=True) - low).clamp(min=1e-6)
    save_image(make_grid(tiles[:, None], nrow=columns, padding=1, pad_value=1.0), path)


class AudioModality(Modality):
    """Waveforms [C, T] in [-1, 1]; class labels drawn uniformly when the teacher is class-conditional."""

    sample_formats = (".wav", ".png", FOLDER)
    data_range = (-1.0, 1.0)

    def __init__(self, options: AudioOptions, teacher, shape: tuple[int, ...] | None = None) -> None:
        """`shape`: one clip's [C, T] (the teacher's sample shape unless a codec decodes its samples to clips)."""
        shape = tuple(shape or teacher.sample_shape)
        if len(shape) != 2:
            raise ValueError(f"modality.kind: audio needs clips [C, T] (the teacher's samples, or what its codec "
                             f"decodes them to), got {shape}")
        self.options = options
        self.sample_shape = shape
        self.num_classes = teacher.num_classes
        self.law = tones_law_of(teacher)
        rate = self.law.sample_rate if self.law is not None else None
        if options.sample_rate is not None and rate is not None and options.sample_rate != rate:
            raise ValueError(f"modality.sample_rate: {options.sample_rate} Hz, but the teacher was trained on tones "
                             f"at {rate} Hz")
        self.sample_rate = options.sample_rate or rate
        if self.sample_rate is None:
            raise ValueError("modality.sample_rate: the teacher's metadata names no sample rate; set it")
        if self.law is not None and shape[1] != self.law.length:
            raise ValueError(f"teacher: samples of {shape[1]} samples, but its tones data were {self.law.length} long")
        self.classifier = load_frozen(AudioClassifier(), options.classifier, "modality.classifier",
                                      "audio classifier") if options.classifier else None
        self._reference: tuple[torch.Tensor, torch.Tensor] | None = None

    def draw_inputs(self, n, generator=None):
        return noise_and_labels(n, self.sample_shape, self.num_classes, generator)

    def save_samples(self, samples, cond, path: Path) -> Path:
        """`x.wav`: the clips one after another; `x.png`: the spectrogram grid; a suffix-less path: a folder with one
        wav per clip (`sample_0000.wav`, ..., with its class in the name when class-conditional) and
        `spectrograms.png`."""
        kind = path.suffix or FOLDER
        if kind not in self.sample_formats:
            raise ValueError(f"{path}: audio samples are written as .wav, .png or a folder (a path without suffix)")
        check_finite(samples, path)
        if is_labels(cond):
            order = torch.argsort(cond.cpu(), stable=True)
            samples, cond = samples[order], cond[order]
        if kind == ".wav":
            path.parent.mkdir(parents=True, exist_ok=True)
            write_wav(rearrange(samples, "n c t -> c (n t)"), path, self.sample_rate)
        elif kind == ".png":
            path.parent.mkdir(parents=True, exist_ok=True)
            spectrogram_grid(samples, self.options.grid_columns, path)
        else:
            path.mkdir(parents=True, exist_ok=True)
            for i, clip in enumerate(samples):
                label = f"_class{int(cond[i])}" if is_labels(cond) else ""
                write_wav(clip, path / f"sample_{i:04d}{label}.wav", self.sample_rate)
            spectrogram_grid(samples, self.options.grid_columns, path / "spectrograms.png")
        return path

    @torch.no_grad()
    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """The toy classifier's pooled features of clips at this modality's rate."""
        return torch.cat([self.classifier(chunk.float().clamp(-1, 1), self.sample_rate)[1]
                          for chunk in clips.split(SCORE_BATCH)])

    def reference_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature statistics of real clips from the teacher's law (cached)."""
        if self._reference is None:
            clips, _ = tone_clips(REFERENCE_CLIPS, self.law, torch.Generator().manual_seed(REFERENCE_SEED))
            self._reference = gaussian_stats(self.features(clips))
        return self._reference

    def evaluate(self, samples, cond) -> dict[str, float]:
        """The exact tone scores when the teacher's data were tones; `fad_toy` too when a classifier is set."""
        if self.law is None:
            return {}
        metrics = tone_scores(samples, cond if is_labels(cond) else None, self.law)
        if self.classifier is not None:
            metrics["fad_toy"] = frechet_distance(*gaussian_stats(self.features(samples)), *self.reference_stats())
        return metrics

    def headline_metric(self) -> str:
        return "fad_toy" if self.classifier is not None and self.law is not None else "impurity"


MODALITIES.register("audio", AudioOptions)(
    lambda options, context: AudioModality(options, context.teacher, getattr(context, "data_shape", None)))
