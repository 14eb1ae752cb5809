"""Data parallelism without launching ranks: a rank's draws are its rows of the single-process draw,
accumulated micro-batches give the whole batch's gradient, and bad settings name their key."""

import pytest
import torch
from torch import nn

from potstill.backbones.dit import DiT, DiTOptions
from potstill.core import parallel
from potstill.core.config import ConfigError, OptimConfig, TrainConfig, load_config, to_dict
from potstill.core.deepspeed_engine import read_deepspeed_json
from potstill.core.distiller import Distiller
from potstill.core.engine import Part, PlainEngine
from potstill.core.schedules import build_schedule
from potstill.core.time_draws import TimeOptions, draw_times
from potstill.launch import parse_args, run
from tests_support import CONFIGS, make_config


@pytest.fixture
def second_of_two_ranks():
    parallel.set_place(1, 2)
    yield
    parallel.set_place(0, 1)


def test_a_rank_draws_its_rows_of_the_global_draw(second_of_two_ranks):
    x = torch.zeros(3, 2)
    schedule = build_schedule("edm", {}, "teacher.schedule")
    torch.manual_seed(5)
    noise, times = parallel.randn_like(x), draw_times(TimeOptions(t_sampling="dsm"), schedule, 3)
    parallel.set_place(0, 1)
    torch.manual_seed(5)
    whole_noise, whole_times = torch.randn(6, 2), draw_times(TimeOptions(t_sampling="dsm"), schedule, 6)
    torch.testing.assert_close(noise, whole_noise[3:])
    torch.testing.assert_close(times, whole_times[3:])


def test_checkpointed_dit_blocks_give_the_same_outputs_and_gradients():
    options = DiTOptions(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=2,
                         num_classes=10, learn_sigma=False)
    torch.manual_seed(0)
    model = DiT(options).eval()
    for p in model.parameters():
        nn.init.normal_(p, std=0.1)
    x, c, y = torch.randn(4, 1, 8, 8), torch.rand(4), torch.arange(4)
    results = []
    for recompute in (False, True):
        model.zero_grad()
        model.activation_checkpointing = recompute
        out = model(x, c, y)
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b)


def test_rows_of_a_one_rank_draw():
    torch.manual_seed(5)
    noise = parallel.randn_like(torch.zeros(4, 2))
    torch.manual_seed(5)
    torch.testing.assert_close(noise, torch.randn(4, 2))
    assert parallel.take_rows({"a": torch.arange(4), "b": None}, slice(1, 3))["a"].tolist() == [1, 2]


def test_a_batch_that_does_not_split_names_the_key(second_of_two_ranks):
    with pytest.raises(ValueError, match=r"train.batch_size: 7 does not split evenly over 2 ranks"):
        parallel.local_batch_size(7)


def test_accumulated_micro_batches_give_the_whole_batch_gradient():
    torch.manual_seed(0)
    data = torch.randn(8, 3)
    models = [nn.Linear(3, 1), nn.Linear(3, 1)]
    models[1].load_state_dict(models[0].state_dict())
    whole = PlainEngine(train=TrainConfig(grad_accum=1))
    split = PlainEngine(train=TrainConfig(grad_accum=2))
    trainables = [engine.prepare("generator", [Part("generator", model, OptimConfig(lr=0.1))])
                  for engine, model in zip((whole, split), models, strict=True)]
    whole.backward(trainables[0], models[0](data).square().mean(), "generator")
    for half in data.chunk(2):
        split.backward(trainables[1], models[1](half).square().mean(), "generator")
    norms = [whole.step(trainables[0]), split.step(trainables[1])]
    assert norms[0]["generator"] == pytest.approx(norms[1]["generator"], rel=1e-6)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_teacher_shard_is_a_teacher_key_only():
    config = load_config(CONFIGS / "image" / "digits_dmd2_deepspeed.yaml")
    assert config.teacher.shard and config.engine.kind == "deepspeed" and config.engine.options.zero_stage == 3
    assert to_dict(config)["teacher"]["shard"] is True
    with pytest.raises(ConfigError, match=r"teacher.shard: expected true or false"):
        load_config(CONFIGS / "image" / "digits_dmd2.yaml", ["teacher.shard=yes please"])
    with pytest.raises(ConfigError, match=r"fake_score.shard: unknown key"):
        load_config(CONFIGS / "image" / "digits_dmd2.yaml", ["fake_score.shard=true"])


def test_deepspeed_json_is_found_by_name_or_named_in_the_error():
    assert read_deepspeed_json("zero3.json")["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    with pytest.raises(ConfigError, match=r"engine.config_file: missing\.json not found"):
        read_deepspeed_json("missing.json")


def test_launch_refuses_the_plain_engine_on_many_ranks(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = parse_args([str(CONFIGS / "vector" / "gmm_dmd2.yaml"), "--out", str(tmp_path), "--local_rank=1"])
    with pytest.raises(ValueError, match=r"engine.kind: 'plain' runs one process but this launch has 2 ranks"):
        run(args)


def test_activation_checkpointing_needs_a_backbone_with_blocks():
    with pytest.raises(ValueError, match=r"train.activation_checkpointing: none of the trained models"):
        Distiller(make_config(generator={"kind": "mlp"}, fake_score={"kind": "mlp"},
                              train={"activation_checkpointing": True}))


def test_an_engine_that_steps_all_parts_refuses_a_sparser_discriminator(monkeypatch):
    monkeypatch.setattr(PlainEngine, "steps_parts_alone", False)     # as the DeepSpeed engine
    with pytest.raises(ValueError, match=r"train.discriminator_every: under DeepSpeed"):
        Distiller(load_config(CONFIGS / "image" / "digits_dmd2.yaml", ["train.discriminator_every=2",
                                                                       "real_data=digits"]))


def test_micro_batches_that_do_not_split_name_the_key(second_of_two_ranks):
    assert parallel.micro_batch_size(16, 2) == 4
    with pytest.raises(ValueError, match=r"train.batch_size: 12 does not split into 2 ranks x 4 micro-batches"):
        parallel.micro_batch_size(12, 4)
    with pytest.raises(ValueError, match=r"train.grad_accum: must be at least 1, got 0"):
        parallel.micro_batch_size(16, 0)
