"""The adversarial core: R1 against finite differences, APT's approximate R1 against R1, discriminator
time draws, the teacher copy APT trains, ADD's encoder with heads and local weights, and the errors a
config gets when an objective lacks what it reads."""

import pytest
import torch
from safetensors.torch import save_file

from potstill.core.adversarial.encoder import EncoderGANOptions, build_encoder
from potstill.core.adversarial.losses import approximate_r1_penalty, r1_penalty
from potstill.core.config import load_config
from potstill.core.distiller import Distiller
from tests_support import CONFIGS, RING, make_config

RING_MLP = {"teacher": RING, "generator": {"kind": "mlp"}, "fake_score": {"kind": "mlp"}}


def small_critic():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def test_r1_matches_finite_differences():
    critic = small_critic().double()
    x = torch.randn(5, 3, dtype=torch.float64)
    def logits_of(v):
        return critic(v)[:, 0]
    h = 1e-6
    grads = torch.stack([(logits_of(x + h * e) - logits_of(x - h * e)) / (2 * h) for e in torch.eye(3).double()], 1)
    torch.testing.assert_close(r1_penalty(logits_of, x), (grads**2).sum(1).mean(), rtol=1e-6, atol=1e-9)


def test_approximate_r1_divided_by_sigma_approaches_r1():
    critic = small_critic()
    x = torch.randn(4, 3).repeat(20_000, 1)
    def logits_of(v):
        return critic(v)[:, 0]
    torch.manual_seed(1)
    approximate = approximate_r1_penalty(logits_of, x, 1e-3, "divided")
    plain = approximate_r1_penalty(logits_of, x, 1e-3, "plain")
    exact = r1_penalty(logits_of, x)
    assert abs(approximate.item() / exact.item() - 1) < 0.05
    torch.testing.assert_close(plain, approximate * 1e-6, rtol=0.05, atol=0)


def test_r1_penalty_reaches_the_discriminator_step():
    distiller = Distiller(make_config(RING_MLP, objective="dmd2", real_data="mixture",
                                      adversary={"kind": "feature_gan", "r1_weight": 1.0}))
    metrics = distiller.critic_update(0)
    assert metrics["d_r1"] > 0 and metrics["d_grad_norm"] > 0


def test_ladd_draws_high_noise_and_feature_gan_uniform():
    ladd = Distiller(make_config(RING_MLP, objective="ladd", real_data="mixture",
                                 adversary={"kind": "ladd", "network": "fake_score"})).adversary
    uniform = Distiller(make_config(RING_MLP, objective="dmd2", real_data="mixture",
                                    adversary="feature_gan")).adversary
    schedule = ladd.network.schedule
    torch.manual_seed(0)
    ladd_median = ladd.draw_times(20_000).median()
    uniform_median = uniform.draw_times(20_000).median()
    assert ladd_median > schedule.t_at(torch.tensor(0.65)) > uniform_median > schedule.t_at(torch.tensor(0.45))


def test_objective_ladd_builds_its_own_adversary():
    distiller = Distiller(load_config(CONFIGS / "image" / "digits_ladd.yaml", ["train.progress=false"]))
    assert type(distiller.adversary).__name__ == "FeatureDiscriminator"
    assert distiller.adversary.options.network == "teacher" and distiller.adversary.options.loss == "hinge"
    assert not distiller.trains_fake and distiller.fake_score is None


def test_apt_trains_a_copy_of_the_teacher_and_leaves_the_teacher(digits_shards):
    config = load_config(CONFIGS / "image" / "digits_apt.yaml", ["train.batch_size=4", "train.progress=false",
                                                                 f"real_data.shards={digits_shards}"])
    distiller = Distiller(config)
    copy_before = {k: v.clone() for k, v in distiller.adversary.network_copy.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
    metrics = distiller.critic_update(0)
    assert "d_approx_r1" in metrics
    assert any(not torch.equal(v, distiller.adversary.network_copy.state_dict()[k]) for k, v in copy_before.items())
    assert all(torch.equal(v, distiller.teacher.state_dict()[k]) for k, v in teacher_before.items())


def encoder_options(**overrides):
    options = {"model": "vit_small_patch16_224", "layers": [0, 1], "resize": 16,
               "model_options": {"img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2}}
    return EncoderGANOptions(**(options | overrides))


def test_add_encoder_loads_local_weights(tmp_path):
    built = build_encoder(encoder_options(), 1)
    path = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() + 1.0 for k, v in built.state_dict().items()}, path)
    loaded = build_encoder(encoder_options(checkpoint=str(path)), 1)
    for key, value in built.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value + 1.0)
    with pytest.raises(FileNotFoundError, match=r"adversary\.checkpoint"):
        build_encoder(encoder_options(checkpoint=str(tmp_path / "missing.safetensors")), 1)


def test_add_discriminator_heads_read_several_layers_and_the_class():
    config = load_config(CONFIGS / "image" / "digits_add.yaml", ["train.batch_size=4", "train.progress=false"])
    distiller = Distiller(config)
    adversary = distiller.adversary
    assert len(adversary.heads) == len(config.adversary.options.layers) == 4
    assert not any(p.requires_grad for p in adversary.encoder.parameters())
    x = torch.randn(4, 1, 8, 8)
    for head in adversary.heads:
        torch.nn.init.normal_(head.class_embed.weight)
    labelled = adversary.logits(x, torch.tensor([0, 1, 2, 3]))
    assert not torch.allclose(labelled, adversary.logits(x, torch.tensor([4] * 4)))
    metrics = distiller.critic_update(0)
    assert metrics["d_r1"] > 0


@pytest.mark.parametrize(("sections", "key"), [
    ({"objective": "fdistill"}, "adversary"),
    ({"objective": "sida"}, "real_data"),
    ({"objective": "vsd", "fake_score": None}, "fake_score"),
    ({"objective": "fdistill", "real_data": "mixture", "adversary": {"kind": "feature_gan", "generator_weight": 0.0}},
     "adversary.generator_weight"),
    ({"objective": "add", "real_data": "mixture"}, "adversary.kind"),
])
def test_missing_parts_are_named(sections, key):
    with pytest.raises(ValueError, match=key):
        Distiller(make_config(RING_MLP, **sections))
