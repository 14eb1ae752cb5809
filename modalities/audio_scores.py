"""Exact scores of clips against the tones law (data/tones.py): a real clip's rFFT over its whole window has energy
only on its class's bins, so `purity` (energy on those bins / all energy) is 1 on real clips and `pitch_accuracy`
(the class's m fundamentals are the clip's m strongest bins) is 1 on real clips whatever the phases and gains."""

from __future__ import annotations

import torch

from potstill.data.tones import TonesOptions, class_bins

EPS = 1e-20


def power_spectrum(clips: torch.Tensor) -> torch.Tensor:
    """[B, C, T] -> [B, T // 2 + 1]: |rFFT|^2 over the whole window, summed over channels (float64)."""
    return torch.fft.rfft(clips.double(), dim=-1).abs().pow(2).sum(1)


def purities(power: torch.Tensor, law: TonesOptions) -> torch.Tensor:
    """[B, K]: each clip's share of energy on each class's bins."""
    total = power.sum(1).clamp(min=EPS)
    return torch.stack([power[:, class_bins(f, law.harmonics)].sum(1) / total for f in law.classes], dim=1)


def pitches_correct(power: torch.Tensor, labels: torch.Tensor, law: TonesOptions) -> torch.Tensor:
    """[B] bool: the clip's len(fundamentals) strongest bins are exactly its class's fundamentals."""
    correct = torch.zeros(len(labels), dtype=torch.bool)
    for c, fundamentals in enumerate(law.classes):
        rows = (labels == c).nonzero().flatten()
        if len(rows):
            strongest = power[rows].topk(len(fundamentals), dim=1).indices.sort(dim=1).values
            correct[rows] = (strongest == torch.tensor(sorted(fundamentals))).all(1)
    return correct


def tone_scores(clips: torch.Tensor, labels: torch.Tensor | None, law: TonesOptions) -> dict[str, float]:
    """`pitch_accuracy` and its worst class, `purity` (on the intended class's bins) and its worst class, and
    `impurity` = 1 - purity. Unconditional clips are scored against the class they fit best: among the classes
    whose fundamentals are its strongest bins the purest, else the purest of all (a note's bins lie inside a chord's,
    so purity alone would call every note a chord)."""
    power = power_spectrum(clips)
    share = purities(power, law)
    if labels is None:
        fits = torch.stack([pitches_correct(power, torch.full((len(power),), c), law)
                            for c in range(len(law.classes))], dim=1)
        labels = (2 * fits.double() + share).argmax(1)
    labels = labels.cpu()
    correct = pitches_correct(power, labels, law).double()
    purity = share.gather(1, labels[:, None])[:, 0]
    present = [c for c in range(len(law.classes)) if (labels == c).any()]
    return {"pitch_accuracy": float(correct.mean()),
            "pitch_accuracy_min": min(float(correct[labels == c].mean()) for c in present),
            "purity": float(purity.mean()),
            "purity_min": min(float(purity[labels == c].mean()) for c in present),
            "impurity": 1.0 - float(purity.mean())}
