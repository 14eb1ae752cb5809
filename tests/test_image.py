"""The image modality on the embedded digits: classifier and FDD, teacher quality by NFE, and short
DMD2-with-GAN (real digits streamed from shards to the discriminator) and SiD runs."""

import pytest
import torch

from potstill.core.config import load_config
from potstill.core.distiller import Distiller
from potstill.core.evaluation import evaluate_teacher
from potstill.data.digits import load_digits_tensors
from potstill.modalities.frechet import frechet_distance, gaussian_stats
from tests_support import CONFIGS, logged_losses, whole_and_resumed

SHORT = ["train.progress=false", "train.batch_size=8", "train.sample_every=0", "eval.n_samples=64",
         "eval.batch_size=64"]


@pytest.fixture(scope="module")
def dmd2_run(digits_shards):
    return Distiller(load_config(CONFIGS / "image" / "digits_dmd2.yaml",
                                 [*SHORT, "train.steps=4", f"real_data.shards={digits_shards}"]))


def test_classifier_and_fdd(dmd2_run):
    modality = dmd2_run.modality
    images, labels = load_digits_tensors()
    logits, features = modality.classifier(images)
    assert (logits.argmax(1) == labels).float().mean() > 0.98
    metrics = modality.evaluate(images, labels)
    assert metrics["fdd"] < 1e-6 and metrics["class_recall_min"] > 0.9
    noise = modality.evaluate(torch.rand_like(images) * 2 - 1, labels)
    assert noise["fdd"] > 100 * (1 + metrics["fdd"])
    mu, cov = gaussian_stats(features)
    assert frechet_distance(mu, cov, mu + 1, cov) == pytest.approx(features.shape[1], rel=1e-6)


def test_teacher_improves_with_nfe(dmd2_run):
    fdd = {nfe: evaluate_teacher(dmd2_run.modality, dmd2_run.teacher, nfe, 500, 500)["fdd"] for nfe in (1, 9)}
    assert fdd[9] < fdd[1] / 3


def test_short_digits_run_resumes_exactly(tmp_path):
    """SiD on digits; the DMD2 and APT configs, which stream real digits, are resumed in test_real_data_runs.py."""
    overrides = [*SHORT, "train.steps=4", "train.checkpoint_every=2", "train.generator_every=2", "train.log_every=1"]
    config = load_config(CONFIGS / "image" / "digits_sid.yaml", overrides)
    _, resumed, resumed_from = whole_and_resumed(config, tmp_path, stop_after=3)
    assert resumed_from == 2
    assert logged_losses(tmp_path / "split") == logged_losses(tmp_path / "whole")
    path = resumed.save_samples(16)
    assert path.suffix == ".png" and path.is_file()
