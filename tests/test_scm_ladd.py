"""SANA-Sprint's sCM + LADD (consistency.md §4.3): misaligned real pairs are counted as fakes only where the two
conditions differ, the discriminator loss equals the hinge loss recomputed by hand over fakes and misaligned reals,
the student's adversarial samples come from the top level for the configured share and from sCM's log-normal
otherwise, both phases draw them that way, and an unconditional modality refuses misaligned pairs."""

import math

import pytest
import torch

from potstill.core.adversarial.feature import misaligned_pairs
from potstill.core.adversarial.losses import discriminator_gan_loss
from potstill.core.config import load_config
from potstill.core.distiller import Distiller
from potstill.core.objectives.scm import SCM, SCMOptions
from tests_support import CONFIGS, RING, make_config


def test_misaligned_pairs_keep_only_rows_whose_conditions_differ():
    real = torch.arange(5.0)[:, None]
    labels = torch.tensor([0, 0, 1, 2, 2])
    wrong, wrong_labels = misaligned_pairs(real, labels)
    torch.testing.assert_close(wrong[:, 0], torch.tensor([0.0, 2.0, 3.0]))
    torch.testing.assert_close(wrong_labels, torch.tensor([2, 0, 1]))
    text = {"embedding": torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), "mask": torch.ones(3, 2)}
    wrong, wrong_text = misaligned_pairs(real[:3], text)
    torch.testing.assert_close(wrong[:, 0], torch.tensor([0.0, 2.0]))
    torch.testing.assert_close(wrong_text["embedding"], torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


@pytest.fixture(scope="module")
def digits_scm_ladd():
    return Distiller(load_config(CONFIGS / "image" / "digits_scm_ladd.yaml",
                                 ["train.progress=false", "train.batch_size=8", "train.steps=10"]))


def test_the_discriminator_loss_counts_misaligned_reals_as_fakes(digits_scm_ladd):
    adversary = digits_scm_ladd.adversary
    real, cond = digits_scm_ladd.next_real(8)
    fake = torch.randn_like(real)
    torch.manual_seed(3)
    loss, _ = adversary.discriminator_loss(real, cond, fake, cond)
    torch.manual_seed(3)
    logits_real = adversary.logits(real, cond)
    wrong, wrong_cond = misaligned_pairs(real, cond)
    assert 0 < wrong.shape[0] <= 8
    logits_fake = torch.cat([adversary.logits(fake, cond), adversary.logits(wrong, wrong_cond)])
    torch.testing.assert_close(loss, 0.5 * (torch.relu(1 - logits_real).mean() + torch.relu(1 + logits_fake).mean()))
    torch.manual_seed(3)
    adversary.options.misaligned_fakes = False
    try:
        aligned, _ = adversary.discriminator_loss(real, cond, fake, cond)
    finally:
        adversary.options.misaligned_fakes = True
    torch.testing.assert_close(aligned, discriminator_gan_loss(logits_real, logits_fake[:8], "hinge"))


class RecordingStudent(torch.nn.Module):
    """Stands in for the consistency student: returns each sample's sigma and the noise it was given."""

    sigma_min, sigma_max = 0.002, 80.0

    def consistency(self, x_e, sigma, cond=None):
        return torch.stack([sigma.float(), x_e[:, 0]], 1)


def test_adversarial_samples_start_at_the_top_level_for_the_configured_share():
    torch.manual_seed(0)
    options = SCMOptions(adversarial_max_time=0.3)
    out = SCM(options).adversarial_sample(RecordingStudent(), torch.zeros(40_000, 1), None)
    sigma, noised = out[:, 0].double(), out[:, 1].double()
    top = sigma == 80.0
    assert abs(top.double().mean().item() - 0.3) < 0.01
    drawn = sigma[~top].log()
    assert abs(drawn.median().item() - options.p_mean) < 0.03
    assert abs((drawn.quantile(0.75) - drawn.quantile(0.25)).item() / 1.349 - options.p_std) < 0.05
    unit = noised / sigma
    assert abs(unit.std().item() - 1) < 0.02 and math.isclose(unit.mean().item(), 0, abs_tol=0.02)


def test_both_phases_draw_the_students_adversarial_samples(digits_scm_ladd, monkeypatch):
    calls = []
    original = digits_scm_ladd.objective.adversarial_sample
    monkeypatch.setattr(digits_scm_ladd.objective, "adversarial_sample",
                        lambda *args: calls.append(torch.is_grad_enabled()) or original(*args))
    digits_scm_ladd.critic_update(0)
    digits_scm_ladd.generator_update()
    assert calls == [False, True]


def test_misaligned_fakes_need_a_conditioned_modality():
    with pytest.raises(ValueError, match=r"adversary\.misaligned_fakes"):
        Distiller(make_config({"teacher": RING, "generator": {"kind": "mlp"}, "fake_score": {"kind": "mlp"}},
                              objective="ladd", real_data="mixture",
                              adversary={"kind": "ladd", "network": "fake_score", "misaligned_fakes": True}))
