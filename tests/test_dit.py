"""DiT: parameter names and shapes of the public reference implementation (DiT-XL/2 included), loading
its checkpoints, conditioning, features and the denoiser parameterisations around it."""

import pytest
import torch

from potstill.backbones.dit import DiT, DiTOptions
from potstill.core.denoiser import Denoiser
from potstill.core.schedules import VPSchedule
from potstill.modalities.image import DiTTeacherOptions, build_dit_denoiser

TINY = DiTOptions(input_size=8, patch_size=2, in_channels=2, hidden_size=32, depth=2, num_heads=4, num_classes=3)


def reference_shapes(depth=28, hidden=1152, patch=2, channels=4, classes=1000, grid=16, learn_sigma=True):
    """The state-dict layout of facebookresearch/DiT `models.py`, written out by hand."""
    out = channels * (2 if learn_sigma else 1)
    shapes = {
        "pos_embed": (1, grid * grid, hidden),
        "x_embedder.proj.weight": (hidden, channels, patch, patch), "x_embedder.proj.bias": (hidden,),
        "t_embedder.mlp.0.weight": (hidden, 256), "t_embedder.mlp.0.bias": (hidden,),
        "t_embedder.mlp.2.weight": (hidden, hidden), "t_embedder.mlp.2.bias": (hidden,),
        "y_embedder.embedding_table.weight": (classes + 1, hidden),
        "final_layer.linear.weight": (patch * patch * out, hidden), "final_layer.linear.bias": (patch * patch * out,),
        "final_layer.adaLN_modulation.1.weight": (2 * hidden, hidden),
        "final_layer.adaLN_modulation.1.bias": (2 * hidden,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        shapes |= {
            b + "attn.qkv.weight": (3 * hidden, hidden), b + "attn.qkv.bias": (3 * hidden,),
            b + "attn.proj.weight": (hidden, hidden), b + "attn.proj.bias": (hidden,),
            b + "mlp.fc1.weight": (4 * hidden, hidden), b + "mlp.fc1.bias": (4 * hidden,),
            b + "mlp.fc2.weight": (hidden, 4 * hidden), b + "mlp.fc2.bias": (hidden,),
            b + "adaLN_modulation.1.weight": (6 * hidden, hidden), b + "adaLN_modulation.1.bias": (6 * hidden,),
        }
    return shapes


def test_dit_xl_2_matches_the_reference_layout():
    with torch.device("meta"):
        model = DiT(DiTOptions())          # the defaults are DiT-XL/2 on 32x32x4 latents
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == reference_shapes()
    assert sum(v.numel() for v in model.state_dict().values()) == 675_129_632


def test_reference_checkpoint_loads_as_an_eps_teacher(tmp_path):
    torch.manual_seed(0)
    reference = DiT(DiTOptions(**{**TINY.__dict__, "learn_sigma": True}))
    for p in reference.parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = tmp_path / "DiT-tiny.pt"
    torch.save(reference.state_dict(), path)
    teacher = build_dit_denoiser(DiTTeacherOptions(
        checkpoint=str(path), dit={**TINY.__dict__, "learn_sigma": True}, schedule="vp_linear", prediction="eps"))
    x_t, t, y = torch.randn(4, 2, 8, 8), torch.full((4,), 0.5), torch.tensor([0, 1, 2, 0])
    eps = reference(x_t, 999 * t, y)
    assert eps.shape == (4, 2, 8, 8)                    # the variance channels are dropped
    schedule = VPSchedule("linear")
    torch.testing.assert_close(teacher.x0(x_t, t, y), schedule.x0_from_eps(x_t, eps, t))


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save(DiT(TINY).state_dict(), path)
    with pytest.raises(ValueError, match="does not match the DiT configuration"):
        build_dit_denoiser(DiTTeacherOptions(checkpoint=str(path), dit={**TINY.__dict__, "hidden_size": 64}))
    with pytest.raises(FileNotFoundError, match=r"teacher\.checkpoint"):
        build_dit_denoiser(DiTTeacherOptions(checkpoint=str(tmp_path / "missing.pt")))


def test_features_and_conditioning():
    torch.manual_seed(0)
    model = DiT(DiTOptions(**{**TINY.__dict__, "text_dim": 5}))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(3, 2, 8, 8), torch.rand(3)
    out, feats = model(x, t, torch.tensor([0, 1, 2]), features=[0, -1])
    assert [f.shape for f in feats] == [(3, 16, 32), (3, 16, 32)]
    torch.testing.assert_close(out, model(x, t, torch.tensor([0, 1, 2])))
    assert not torch.allclose(model(x, t, torch.tensor([0, 0, 0])), model(x, t, torch.tensor([1, 1, 1])))
    text = torch.randn(3, 5)
    assert model(x, t, text).shape == x.shape
    assert torch.equal(model.null_condition(torch.tensor([2])), torch.tensor([3]))


def test_classifier_free_guidance_is_the_standard_form():
    torch.manual_seed(0)
    model = DiT(TINY)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    denoiser = Denoiser(model, VPSchedule("linear"), "eps", sample_shape=(2, 8, 8), num_classes=3)
    x_t, t, y = torch.randn(2, 2, 8, 8), torch.full((2,), 0.3), torch.tensor([1, 2])
    conditional, unconditional = denoiser.x0(x_t, t, y), denoiser.x0(x_t, t, torch.tensor([3, 3]))
    torch.testing.assert_close(denoiser.x0(x_t, t, y, guidance=4.0),
                               unconditional + 4.0 * (conditional - unconditional), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prediction", ["x0", "eps", "v", "flow", "edm"])
def test_every_parameterisation_recovers_x0_from_its_exact_target(prediction):
    """A backbone that outputs the exact target for a known x0 makes the Denoiser return that x0."""
    from potstill.core.schedules import EDMSchedule, FlowSchedule

    schedule = {"flow": FlowSchedule(), "edm": EDMSchedule()}.get(prediction, VPSchedule("cosine"))
    x0, eps = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    t = schedule.t_at(torch.rand(5, dtype=torch.float64) * 0.8 + 0.1)
    x_t = schedule.add_noise(x0, eps, t)

    class Oracle(torch.nn.Module):
        def forward(self, x_in, c_noise, cond=None, features=None):
            if prediction == "edm":     # F = (D - c_skip x) / c_out in VE coordinates
                sd, s = 0.5, schedule.edm_sigma(t)[:, None]
                c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
                return (x0 - c_skip * x_t) / c_out
            return {"x0": x0, "eps": eps, "v": schedule.v_from_x0(x_t, x0, t),
                    "flow": schedule.flow_from_x0(x_t, x0, t)}[prediction]

    denoiser = Denoiser(Oracle(), schedule, prediction)
    torch.testing.assert_close(denoiser.x0(x_t, t), x0)
