"""The student FDD a run reports equals one computed apart from potstill's evaluation code: `potstill sample` writes
the EMA student's samples (drawn as the evaluation draws them: its seed, its batch), and numpy and scipy compute the
Frechet distance of their classifier features to those of the 1797 scikit-learn digits (Heusel et al. 2017, eq. 6)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.datasets import load_digits
from test_cli import potstill

from potstill.core.evaluation import EVAL_SEED
from potstill.modalities.image import load_classifier
from tests_support import CONFIGS

N_SAMPLES, BATCH = 400, 200


def classifier_features(images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return load_classifier("embedded:digits_classifier")(images.clamp(-1, 1))[1].double().numpy()


def frechet_by_scipy(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_reported_fdd_matches_an_independent_computation_on_sampled_output(tmp_path):
    run = tmp_path / "run"
    potstill("distill", str(CONFIGS / "image" / "digits_demo.yaml"), "--out", str(run), "--set", "train.steps=30",
             "train.batch_size=16", "train.progress=false", "train.sample_every=0", f"eval.n_samples={N_SAMPLES}",
             f"eval.batch_size={BATCH}")
    reported = json.loads((run / "report.json").read_text())["student"]["fdd"]
    out = tmp_path / "samples.pt"
    potstill("sample", str(run), "--n", str(N_SAMPLES), "--seed", str(EVAL_SEED), "--batch", str(BATCH),
             "--out", str(out))
    samples = torch.load(out)
    assert samples.shape == (N_SAMPLES, 1, 8, 8)
    digits = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16 * 2 - 1
    independent = frechet_by_scipy(classifier_features(samples), classifier_features(digits))
    assert independent == pytest.approx(reported, rel=1e-4)
    assert 1.0 < reported < 1000.0
