"""The view teacher's subject is a class label or a text embedding, never both; a text teacher reads the text after
the six view columns and ignores the label."""

import pytest
import torch

from potstill.backbones.cameras import look_at_origin
from potstill.backbones.view_dit import ViewDiT, ViewDiTOptions, view_condition


def small(**subject) -> ViewDiT:
    """A one-block view DiT whose output depends on its condition (its adaLN-zero layers drawn)."""
    model = ViewDiT(ViewDiTOptions(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=2,
                                   **subject))
    torch.nn.init.normal_(model.final_layer.linear.weight)
    torch.nn.init.normal_(model.final_layer.adaLN_modulation[-1].weight)
    return model


def cameras(n: int):
    return look_at_origin(torch.zeros(n), torch.zeros(n), torch.full((n,), 1.5), torch.full((n,), 0.8))


def test_a_subject_is_a_label_or_a_text_embedding():
    for num_classes, text_dim in ((3, 8), (0, 0)):
        with pytest.raises(ValueError, match="a view DiT's subject is a class label or a text embedding"):
            small(num_classes=num_classes, text_dim=text_dim)


def test_a_text_teacher_reads_the_text_and_not_the_label():
    model = small(num_classes=0, text_dim=8)
    with pytest.raises(ValueError, match=r"the condition must be a float tensor \[B, 14\]"):
        model(torch.randn(1, 3, 8, 8), torch.rand(1), view_condition(torch.zeros(1), cameras(1)))
    x, t = torch.randn(1, 3, 8, 8).expand(2, -1, -1, -1), torch.full((2,), 0.5)
    text = torch.randn(1, 8)
    same_text = model(x, t, view_condition(torch.tensor([0, 5]), cameras(2), text.expand(2, -1)))
    assert torch.allclose(same_text[0], same_text[1], atol=1e-4)
    other_text = model(x, t, view_condition(torch.zeros(2), cameras(2), torch.cat([text, -text])))
    assert not torch.allclose(other_text[0], other_text[1])
    null = model.null_condition(view_condition(torch.zeros(1), cameras(1), text))
    assert null.shape == (1, 14) and null.abs().sum() == 0
