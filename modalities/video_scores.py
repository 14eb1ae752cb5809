"""Scores of clips against the moving-digits law (frame k+1 = frame k rolled by a velocity from a set): the
relative shift residual, whether the best-fitting shift is an allowed one, and means per range of frames."""

from __future__ import annotations

import itertools

import torch

RANGE_FRAMES = 12       # frames per `shift_residual_A_B` range
SEARCH_RADIUS = 2       # `velocity_in_set` compares against every shift with |dy|, |dx| <= this
EPS = 1e-12


def unit_frames(clips: torch.Tensor) -> torch.Tensor:
    """[B, C, F, H, W] in [-1, 1] -> [0, 1] with background 0, so a frame's norm measures its ink."""
    return (clips.float().clamp(-1, 1) + 1) / 2


def search_shifts(radius: int = SEARCH_RADIUS) -> list[tuple[int, int]]:
    """Every [dy, dx] with |dy|, |dx| <= radius."""
    return list(itertools.product(range(-radius, radius + 1), repeat=2))


def transition_residuals(clips: torch.Tensor, shifts: list[tuple[int, int]]) -> torch.Tensor:
    """[K, B, F-1]: ||roll(f_k, v) - f_(k+1)||^2 / ||f_(k+1)||^2 for each shift v, on frames mapped to [0, 1]."""
    frames = unit_frames(clips)
    before, after = frames[:, :, :-1], frames[:, :, 1:]
    ink = after.pow(2).sum((1, 3, 4)).clamp(min=EPS)
    return torch.stack([(torch.roll(before, shifts=tuple(v), dims=(-2, -1)) - after).pow(2).sum((1, 3, 4)) / ink
                        for v in shifts])


def law_residuals(clips: torch.Tensor, velocities: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per transition [B, F-1]: the residual of the best velocity in the set, and whether that is at least as
    good as every other shift with |dy|, |dx| <= SEARCH_RADIUS (the clip moves by an allowed velocity)."""
    allowed = list(dict.fromkeys(tuple(v) for v in velocities))
    others = [v for v in search_shifts() if v not in allowed]
    residuals = transition_residuals(clips, allowed + others)
    best_allowed = residuals[: len(allowed)].min(0).values
    if not others:
        return best_allowed, torch.ones_like(best_allowed, dtype=torch.bool)
    return best_allowed, best_allowed <= residuals[len(allowed):].min(0).values


def range_means(per_transition: torch.Tensor, name: str, width: int = RANGE_FRAMES) -> dict[str, float]:
    """Means of [B, F-1] transition scores over ranges of the later frame's number (frames numbered from 1):
    `NAME_1_12` covers the transitions into frames 2..12, `NAME_13_24` those into frames 13..24, and so on."""
    later = torch.arange(2, per_transition.shape[1] + 2)
    means = {}
    for first in range(1, int(later[-1]) + 1, width):
        inside = (later >= first) & (later < first + width)
        means[f"{name}_{first}_{first + width - 1}"] = float(per_transition[:, inside].mean())
    return means


def law_scores(clips: torch.Tensor, velocities: list[list[int]]) -> dict[str, float]:
    """`shift_residual` (overall and per range of frames) and `velocity_in_set` of clips [B, C, F, H, W]."""
    residual, in_set = law_residuals(clips, velocities)
    return {"shift_residual": float(residual.mean()), **range_means(residual, "shift_residual"),
            "velocity_in_set": float(in_set.float().mean())}


def class_recalls(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Mean and worst per-class share of clips the classifier assigns their intended class."""
    predicted = logits.argmax(1)
    recalls = [float((predicted[labels == c] == c).float().mean()) for c in range(num_classes) if (labels == c).any()]
    return {"class_recall_mean": sum(recalls) / len(recalls), "class_recall_min": min(recalls)}


def class_kept(first_logits: torch.Tensor, last_logits: torch.Tensor) -> dict[str, float]:
    """`class_kept`: the share of clips whose first and last RANGE_FRAMES frames the classifier gives one class
    (the digit stays the same digit however long the clip streams; needs no labels)."""
    return {"class_kept": float((first_logits.argmax(1) == last_logits.argmax(1)).float().mean())}


def class_changes(first_logits: torch.Tensor, last_logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Which way a changed class went: `class_lost`, the share of clips that begin as their label and end as
    another class; `class_corrected`, the share that begin as another class and end as their label (a student
    still following its label per chunk mends a digit begun wrong, which `class_kept` counts as a change)."""
    first, last = first_logits.argmax(1), last_logits.argmax(1)
    return {"class_lost": float(((first == labels) & (last != labels)).float().mean()),
            "class_corrected": float(((first != labels) & (last == labels)).float().mean())}
