"""`real_data: {kind: moving_digits}`: toy videos of one 8x8 digit sliding on a torus at a constant integer
velocity, so frame k+1 is exactly frame k rolled by the velocity (the law the video scores check)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from potstill.core.config import ConfigError
from potstill.core.real_data import SeededStream
from potstill.core.registry import DATASETS
from potstill.core.teacher_file import teacher_data
from potstill.data.digits import load_digits_tensors

DIGIT_SIZE = 8
MIN_CANVAS = DIGIT_SIZE


DEFAULT_LAW = {"canvas": 12, "frames": 8, "velocities": [[0, 1], [1, 0], [0, -1], [-1, 0]], "digits": "all"}


@dataclass
class MovingDigitsOptions:
    """Clips [1, frames, canvas, canvas] in [-1, 1] (background -1). `velocities`: the [dy, dx] pixel shifts per
    frame a clip draws one of, uniformly. `digits`: "all" the 1797 digit images, or a list of the classes to use.
    A setting left null is the run's teacher's (from its file's metadata), else 12, 8, the four unit steps, all."""

    canvas: int | None = None
    frames: int | None = None
    velocities: list[list[int]] | None = None
    seed: int = 0
    digits: Literal["all"] | list[int] | None = None

    def resolved(self, teacher_law: dict | None = None) -> MovingDigitsOptions:
        """Every null setting filled from `teacher_law`, else from the defaults; the law is checked."""
        given = {k: v for k, v in (teacher_law or {}).items() if k in DEFAULT_LAW and v is not None}
        law = {**DEFAULT_LAW, **given}
        options = replace(self, **{k: law[k] for k in DEFAULT_LAW if getattr(self, k) is None})
        check_options(options, "real_data")
        return options


def check_options(options: MovingDigitsOptions, key: str) -> None:
    """Refuse a law that cannot be drawn; errors name `key.<option>`."""
    if options.canvas < MIN_CANVAS:
        raise ConfigError(f"{key}.canvas: must be at least {MIN_CANVAS} (the digits are 8x8), got {options.canvas}")
    if options.frames < 2:
        raise ConfigError(f"{key}.frames: must be at least 2 (a clip needs a transition), got {options.frames}")
    if not options.velocities:
        raise ConfigError(f"{key}.velocities: must hold at least one [dy, dx] pair")
    for i, v in enumerate(options.velocities):
        if len(v) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in v):
            raise ConfigError(f"{key}.velocities[{i}]: must be a pair of integers [dy, dx], got {v!r}")
        if any(abs(s) >= options.canvas for s in v):
            raise ConfigError(f"{key}.velocities[{i}]: each shift must be smaller than the canvas "
                              f"({options.canvas}) in size, got {v!r}")
    if options.digits != "all":
        bad = [c for c in options.digits if not 0 <= c <= 9]
        if not options.digits or bad:
            raise ConfigError(f"{key}.digits: \"all\" or a non-empty list of classes 0..9, got {options.digits!r}")


def digit_pool(digits: Literal["all"] | list[int] = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """The digit images ([N, 8, 8] in [-1, 1]) and labels a law draws from."""
    images, labels = load_digits_tensors()
    if digits != "all":
        keep = torch.isin(labels, torch.tensor(digits))
        images, labels = images[keep], labels[keep]
    return images[:, 0], labels


def moving_digit_clips(n: int, canvas: int, frames: int, velocities: list[list[int]], generator: torch.Generator,
                       digits: Literal["all"] | list[int] = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """n clips [n, 1, frames, canvas, canvas] and their labels [n]: a random digit pasted at a uniform position
    on the torus, moving by a velocity drawn uniformly from `velocities` (frame k = roll(frame 0, k v))."""
    images, labels = digit_pool(digits)
    pick = torch.randint(len(images), (n,), generator=generator)
    velocity = torch.tensor(velocities, dtype=torch.long)[torch.randint(len(velocities), (n,), generator=generator)]
    start = torch.randint(canvas, (n, 2), generator=generator)
    board = torch.full((n, canvas, canvas), -1.0)
    board[:, :DIGIT_SIZE, :DIGIT_SIZE] = images[pick]
    steps = torch.arange(frames)
    offset = start[:, None, :] + steps[None, :, None] * velocity[:, None, :]          # [n, F, 2]
    grid = torch.arange(canvas)
    rows = (grid[None, None, :] - offset[..., 0:1]) % canvas                         # [n, F, canvas]
    cols = (grid[None, None, :] - offset[..., 1:2]) % canvas
    clips = board[torch.arange(n)[:, None, None, None], rows[..., :, None], cols[..., None, :]]
    return clips[:, None], labels[pick]


def moving_digits_stream(options: MovingDigitsOptions) -> SeededStream:
    """Endless clips of a resolved law, resumable exactly."""
    o = options
    return SeededStream(lambda n, g: moving_digit_clips(n, o.canvas, o.frames, o.velocities, g, o.digits), o.seed, o)


@DATASETS.register("moving_digits", MovingDigitsOptions)
def build_moving_digits(options: MovingDigitsOptions, context) -> SeededStream:
    return moving_digits_stream(options.resolved(teacher_data(getattr(context, "teacher", None), "moving_digits")))
