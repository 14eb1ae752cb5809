"""`real_data: {kind: tones}`: synthesised notes and chords whose spectrum is known exactly. A class is a list of
fundamentals given as FFT bin indices of the `length`-sample window; partial k of fundamental f sits on bin k f
with relative amplitude `harmonics[k-1]` and a random phase, and a clip has one random gain. Every partial is a
whole number of periods in the window, so a real clip's rFFT has energy only on its class's bins (the audio
scores' pitch and purity are exact)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import soundfile
import torch

from potstill.core.config import ConfigError, from_dict
from potstill.core.real_data import SeededStream
from potstill.core.registry import DATASETS
from potstill.core.teacher_file import teacher_data

DEFAULT_LAW = {
    "sample_rate": 8000,
    "length": 1024,
    "classes": [[16], [20], [24], [30], [36], [44], [16, 20, 24], [20, 25, 30]],
    "harmonics": [1.0, 0.5, 0.25],
}


@dataclass
class TonesOptions:
    """Clips [channels, length] at `sample_rate` in [-1, 1]: the partials' sum scaled so its largest possible
    peak is 1, times a gain drawn uniformly from `gain`. A setting left null is the run's teacher's (from its
    file's metadata), else the defaults above (8 classes: six notes and two chords at 8 kHz, 1024 samples)."""

    sample_rate: int | None = None
    length: int | None = None
    classes: list[list[int]] | None = None
    harmonics: list[float] | None = None
    gain: list[float] = field(default_factory=lambda: [0.5, 1.0])
    channels: int = 1
    seed: int = 0

    def resolved(self, teacher_law: dict | None = None) -> TonesOptions:
        """Every null setting filled from `teacher_law`, else from the defaults; the law is checked."""
        given = {k: v for k, v in (teacher_law or {}).items() if k in DEFAULT_LAW and v is not None}
        law = {**DEFAULT_LAW, **given}
        options = replace(self, **{k: law[k] for k in DEFAULT_LAW if getattr(self, k) is None})
        check_options(options, "real_data")
        return options


def partials(fundamentals: list[int], harmonics: list[float]) -> list[tuple[int, float]]:
    """(bin, relative amplitude) of every partial of a class."""
    return [(k * f, a) for f in fundamentals for k, a in enumerate(harmonics, start=1)]


def class_bins(fundamentals: list[int], harmonics: list[float]) -> list[int]:
    """The sorted FFT bins a class puts energy on."""
    return sorted({b for b, _ in partials(fundamentals, harmonics)})


def check_options(options: TonesOptions, key: str) -> None:
    """Refuse a law whose partials leave the spectrum or whose fundamentals are not its loudest bins whatever the
    phases (so "the strongest bins are the fundamentals" holds on every real clip); errors name `key.<option>`."""
    for name in ("sample_rate", "length", "channels"):
        if getattr(options, name) < 1:
            raise ConfigError(f"{key}.{name}: must be at least 1, got {getattr(options, name)}")
    h = options.harmonics
    if not h or h[0] <= 0 or any(a < 0 for a in h):
        raise ConfigError(f"{key}.harmonics: relative amplitudes, the first > 0 and none negative, got {h!r}")
    low, high = options.gain
    if not 0 < low <= high <= 1:
        raise ConfigError(f"{key}.gain: [low, high] with 0 < low <= high <= 1, got {options.gain!r}")
    if not options.classes:
        raise ConfigError(f"{key}.classes: must hold at least one list of fundamental bins")
    nyquist = options.length // 2
    for i, fundamentals in enumerate(options.classes):
        where = f"{key}.classes[{i}]"
        if not fundamentals or len(set(fundamentals)) != len(fundamentals):
            raise ConfigError(f"{where}: a non-empty list of distinct FFT bins, got {fundamentals!r}")
        top = max(b for b, a in partials(fundamentals, h) if a > 0)
        if min(fundamentals) < 1 or top >= nyquist:
            raise ConfigError(f"{where}: every partial must lie on a bin in 1..{nyquist - 1} (below Nyquist for "
                              f"length {options.length}); {fundamentals} with {len(h)} harmonics reaches bin {top}")
        check_loudest(fundamentals, h, where)
    if len({tuple(sorted(c)) for c in options.classes}) != len(options.classes):
        raise ConfigError(f"{key}.classes: two classes have the same fundamentals")


def check_loudest(fundamentals: list[int], harmonics: list[float], where: str) -> None:
    """The quietest a fundamental's bin can be (its own amplitude less every other partial on it) must exceed the
    loudest any other bin can be (the sum of its partials)."""
    on_bin: dict[int, list[float]] = defaultdict(list)
    for b, a in partials(fundamentals, harmonics):
        on_bin[b].append(a)
    weakest = min(2 * harmonics[0] - sum(on_bin[f]) for f in fundamentals)
    loudest = max((sum(a) for b, a in on_bin.items() if b not in fundamentals), default=0.0)
    if weakest <= loudest:
        raise ConfigError(f"{where}: with harmonics {harmonics}, a partial of {fundamentals} can be as loud as a "
                          "fundamental (overlapping partials); choose other bins or smaller harmonics")


def tone_clips(n: int, options: TonesOptions, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n clips [n, channels, length] and their class labels [n] (each channel the same clip)."""
    o = options
    labels = torch.randint(len(o.classes), (n,), generator=generator)
    gains = o.gain[0] + (o.gain[1] - o.gain[0]) * torch.rand(n, generator=generator, dtype=torch.float64)
    time = torch.arange(o.length, dtype=torch.float64) / o.length
    clips = torch.zeros(n, o.length, dtype=torch.float64)
    for c, fundamentals in enumerate(o.classes):
        rows = (labels == c).nonzero().flatten()
        waves = partials(fundamentals, o.harmonics)
        bins = torch.tensor([b for b, _ in waves], dtype=torch.float64)
        amplitudes = torch.tensor([a for _, a in waves], dtype=torch.float64)
        phases = 2 * math.pi * torch.rand(len(rows), len(waves), generator=generator, dtype=torch.float64)
        angle = 2 * math.pi * bins[None, :, None] * time[None, None, :] + phases[:, :, None]
        clips[rows] = torch.einsum("p,npl->nl", amplitudes / amplitudes.sum(), angle.cos())
    clips = clips * gains[:, None]
    return clips.float()[:, None].expand(n, o.channels, o.length).contiguous(), labels


def law_of_data(data: dict) -> TonesOptions:
    """The resolved law a teacher file's tones `data` section records (as `teacher_data` returns it)."""
    return from_dict(TonesOptions, data, "teacher metadata data").resolved()


def tones_stream(options: TonesOptions) -> SeededStream:
    """Endless clips of a resolved law, resumable exactly."""
    return SeededStream(lambda n, g: tone_clips(n, options, g), options.seed, options, len(options.classes))


@DATASETS.register("tones", TonesOptions)
def build_tones(options: TonesOptions, context) -> SeededStream:
    return tones_stream(options.resolved(teacher_data(getattr(context, "teacher", None), "tones")))


def export_tones(folder: Path, options: TonesOptions, n: int, seed: int = 0) -> int:
    """n clips of a resolved law as a folder the packer reads: `tone-NNNN.wav` (PCM 16 at the law's rate) with its
    class (`.cls`), so ARC and DMD2's GAN head can stream the law from shards (`tones_arc_shards.yaml`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clips, labels = tone_clips(n, options, torch.Generator().manual_seed(seed))
    for index, (clip, label) in enumerate(zip(clips, labels.tolist(), strict=True)):
        stem = folder / f"tone-{index:04d}"
        soundfile.write(str(stem.with_suffix(".wav")), clip.T.numpy(), options.sample_rate, subtype="PCM_16")
        stem.with_suffix(".cls").write_text(str(label))
    return n
