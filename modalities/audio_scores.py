"""Exact scores of clips against the tones law (data/tones.py): a real clip's rFFT over its whole window has energy
only on its class's bins, so `purity` (energy on those bins / all energy) is 1 on real clips and `pitch_accuracy`
(the class's m fundamentals are the clip's m strongest bins) is 1 on real clips whatever the phases and gains.
Every partial of a real clip has its harmonic weight times the clip's one gain, so `partial_spread` (the spread of
amplitude / weight across a clip's partials) is 0 on real clips and about 0.5 under a Gaussian law on the same bins
(independent Rayleigh amplitudes): it scores the amplitude law that pitch and purity only glimpse. `gain_distance`
scores the law of the one gain: the Wasserstein-1 distance between the clips' gains (read off their lone partials)
and the law's uniform gain (0 on real clips but for sampling; a teacher that gives every clip the mean gain scores
a quarter of the gain range)."""

from __future__ import annotations

from collections import Counter

import torch

from potstill.data.tones import TonesOptions, class_bins, partials

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


def lone_partials(fundamentals: list[int], harmonics: list[float]) -> tuple[list[int], torch.Tensor]:
    """The bins of a class's partials that share their bin with no other partial, and their harmonic weights."""
    waves = partials(fundamentals, harmonics)
    on_bin = Counter(b for b, _ in waves)
    lone = [(b, a) for b, a in waves if on_bin[b] == 1 and a > 0]
    return [b for b, _ in lone], torch.tensor([a for _, a in lone], dtype=torch.float64)


def partial_spreads(power: torch.Tensor, labels: torch.Tensor, law: TonesOptions) -> torch.Tensor:
    """[B]: std / mean, over the clip's class's lone partials, of amplitude / harmonic weight (0 on real clips);
    NaN for a class with fewer than two lone partials."""
    spread = torch.full((len(labels),), float("nan"), dtype=torch.float64)
    for c, fundamentals in enumerate(law.classes):
        rows = (labels == c).nonzero().flatten()
        bins, weights = lone_partials(fundamentals, law.harmonics)
        if len(rows) and len(bins) > 1:
            gains = power[rows][:, bins].sqrt() / weights
            spread[rows] = gains.std(1) / gains.mean(1).clamp(min=EPS)
    return spread


def clip_gains(power: torch.Tensor, labels: torch.Tensor, law: TonesOptions) -> torch.Tensor:
    """[B]: each clip's gain, the mean over its class's lone partials of amplitude / relative weight (a partial
    c cos(2 pi b t / T + phi) has |rFFT| = c T / 2 on bin b); NaN for a class without a lone partial."""
    gain = torch.full((len(labels),), float("nan"), dtype=torch.float64)
    for c, fundamentals in enumerate(law.classes):
        rows = (labels == c).nonzero().flatten()
        bins, weights = lone_partials(fundamentals, law.harmonics)
        if len(rows) and bins:
            total_weight = sum(a for _, a in partials(fundamentals, law.harmonics))
            amplitude = (power[rows][:, bins] / law.channels).sqrt() * 2 / law.length
            gain[rows] = (amplitude * total_weight / weights).mean(1)
    return gain


def gain_distance(gains: torch.Tensor, law: TonesOptions) -> float:
    """Wasserstein-1 distance between the empirical law of `gains` and uniform on `law.gain`: the mean gap between
    the sorted gains and the uniform's quantiles at (i + 1/2) / n."""
    ordered = gains[~gains.isnan()].sort().values
    low, high = law.gain
    quantiles = low + (high - low) * (torch.arange(len(ordered), dtype=torch.float64) + 0.5) / len(ordered)
    return float((ordered - quantiles).abs().mean())


def tone_scores(clips: torch.Tensor, labels: torch.Tensor | None, law: TonesOptions) -> dict[str, float]:
    """`pitch_accuracy` and its worst class, `purity` (on the intended class's bins) and its worst class,
    `impurity` = 1 - purity, `partial_spread` (over the clips whose class has two lone partials) and `gain_distance`
    (over those with one). Unconditional
    clips are scored against the class they fit best: among the classes whose fundamentals are its strongest bins the
    purest, else the purest of all (a note's bins lie inside a chord's, so purity alone would call every note a
    chord)."""
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
    spread = partial_spreads(power, labels, law)
    spread_scores = {"partial_spread": float(spread.nanmean())} if not spread.isnan().all() else {}
    gains = clip_gains(power, labels, law)
    if not gains.isnan().all():
        spread_scores["gain_distance"] = gain_distance(gains, law)
    return {"pitch_accuracy": float(correct.mean()),
            "pitch_accuracy_min": min(float(correct[labels == c].mean()) for c in present),
            "purity": float(purity.mean()),
            "purity_min": min(float(purity[labels == c].mean()) for c in present),
            "impurity": 1.0 - float(purity.mean()), **spread_scores}
