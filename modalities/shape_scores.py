"""Scores of a 3-D field against the analytic shape it should have become: points on the surface seen from fixed
cameras all round (the shape's by exact ray casting, the field's where its opacity crosses 1/2), compared by
Chamfer distance and F-score at a distance threshold (Tatarchenko et al. 2019), and silhouettes by IoU."""

from __future__ import annotations

import torch

from potstill.backbones.cameras import Cameras, camera_rays
from potstill.data.primitives import ray_hits
from potstill.data.shapes3d import ShapeSpec

DISTANCE_CHUNK = 4096       # points whose nearest neighbours are found at once


def analytic_surface(spec: ShapeSpec, cameras: Cameras, image_size: int) -> torch.Tensor:
    """Points [N, 3] where the cameras' pixel rays first hit the shape."""
    origins, directions = camera_rays(cameras, image_size, image_size)
    t = ray_hits(spec.kind, torch.tensor(spec.size), origins, directions)
    hit = torch.isfinite(t)
    return (origins.double() + t.unsqueeze(-1) * directions.double())[hit].float()


def nearest_distances(points: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """For each point [N, 3] its distance to the nearest reference point [M, 3]."""
    if len(reference) == 0:
        return torch.full((len(points),), float("inf"))
    return torch.cat([torch.cdist(chunk, reference).amin(1) for chunk in points.split(DISTANCE_CHUNK)]) \
        if len(points) else torch.zeros(0)


def surface_scores(predicted: torch.Tensor, truth: torch.Tensor, threshold: float) -> dict[str, float]:
    """Chamfer distance (mean nearest distance both ways, halved) and F-score (harmonic mean of precision, the
    share of predicted points within `threshold` of the truth, and recall, the share of true points within it of
    the prediction)."""
    if len(predicted) == 0:
        return {"chamfer": float("inf"), "precision": 0.0, "recall": 0.0, "f_score": 0.0}
    to_truth, to_predicted = nearest_distances(predicted, truth), nearest_distances(truth, predicted)
    precision = float((to_truth <= threshold).float().mean())
    recall = float((to_predicted <= threshold).float().mean())
    f_score = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"chamfer": float(to_truth.mean() + to_predicted.mean()) / 2, "precision": precision, "recall": recall,
            "f_score": f_score}


def silhouette_iou(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    """Intersection over union of two boolean silhouettes of the same views."""
    union = (predicted | truth).sum()
    return float((predicted & truth).sum() / union) if union > 0 else 1.0
