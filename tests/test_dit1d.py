"""The 1-D DiT: shapes, the features hook, lengths other than the training one (RoPE has no table), adaLN-Zero's
zero start, and errors that name the option."""

import pytest
import torch

from potstill.backbones.dit1d import DiT1D, DiT1DOptions, rope_1d_angles

OPTIONS = DiT1DOptions(input_size=64, patch_size=8, in_channels=2, hidden_size=32, depth=3, num_heads=2,
                       num_classes=4)


def randomised(options=OPTIONS) -> DiT1D:
    torch.manual_seed(0)
    model = DiT1D(options)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model


def test_output_matches_the_input_and_features_are_tokens_at_any_depth():
    model = randomised()
    x = torch.randn(3, 2, 64)
    labels = torch.tensor([0, 1, 4])
    out, (first, last) = model(x, torch.full((3,), 0.2), labels, features=[0, -1])
    assert out.shape == x.shape
    assert first.shape == last.shape == (3, 8, 32)
    assert torch.equal(out, model(x, torch.full((3,), 0.2), labels))
    assert not torch.allclose(out, model(x, torch.full((3,), 0.7), labels))


def test_a_fresh_model_predicts_zero():
    model = DiT1D(OPTIONS)
    assert torch.equal(model(torch.randn(2, 2, 64), torch.rand(2), torch.tensor([1, 2])), torch.zeros(2, 2, 64))


def test_other_lengths_run_and_tokens_see_each_other():
    model = randomised()
    x, t = torch.randn(1, 2, 128), torch.full((1,), 0.4)
    out = model(x, t, torch.tensor([2]))
    assert out.shape == x.shape
    moved = x.clone()
    moved[..., -8:] += 1.0
    changed = model(moved, t, torch.tensor([2])) != out
    assert changed[..., :8].any()          # the first patch attends to the last one


def test_rope_angles_grow_with_the_token_index():
    angles = rope_1d_angles(5, 8, 10000.0)
    assert angles.shape == (5, 4)
    assert torch.allclose(angles[3], 3 * angles[1])
    assert torch.equal(angles[0], torch.zeros(4))


def test_class_labels_change_the_output_and_null_label_exists():
    model = randomised()
    x, t = torch.randn(2, 2, 64), torch.full((2,), 0.3)
    assert not torch.allclose(model(x, t, torch.tensor([0, 0])), model(x, t, torch.tensor([1, 1])))
    assert model.null_condition(torch.tensor([1])).item() == 4
    model(x, t, model.null_condition(torch.tensor([0, 1])))


@pytest.mark.parametrize(("change", "named"), [({"input_size": 60}, "backbone.patch_size"),
                                               ({"num_heads": 3}, "backbone.num_heads"),
                                               ({"input_size": None}, "backbone.input_size")])
def test_bad_options_name_the_key(change, named):
    with pytest.raises(ValueError, match=named):
        DiT1D(DiT1DOptions(**{**vars(OPTIONS), **change}))


def test_a_signal_that_is_not_whole_patches_is_refused():
    with pytest.raises(ValueError, match="8-sample patches"):
        randomised()(torch.randn(1, 2, 60), torch.rand(1), torch.tensor([0]))
