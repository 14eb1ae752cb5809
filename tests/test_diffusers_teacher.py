"""Diffusers teachers (core/diffusers_teacher.py) from a tiny class-conditional UNet2DModel and DiTTransformer2DModel
and a DDPM scheduler built here with random weights and saved with `save_pretrained` (nothing downloads): the
schedule is the scheduler's own at every integer timestep (its `add_noise`, and the clean sample its `step`
predicts, for epsilon and v prediction); DiT's null class gives classifier-free guidance and its student copy keeps
every label; DMD2 with a feature discriminator on the fake score's blocks trains on both; bad folders and classes
are named."""

import pytest
import torch
from diffusers import DDPMScheduler, DiTTransformer2DModel, UNet2DModel

from potstill.core.config import ConfigError, load_config
from potstill.core.distiller import Distiller
from potstill.core.registry import TEACHERS


def tiny_model(kind: str):
    torch.manual_seed(0)
    if kind == "UNet2DModel":
        return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                           layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8, num_class_embeds=10)
    return DiTTransformer2DModel(sample_size=8, in_channels=1, out_channels=2, num_layers=2, attention_head_dim=8,
                                 num_attention_heads=2, patch_size=2, num_embeds_ada_norm=10)


def save_model(folder, kind: str, prediction: str) -> None:
    model = tiny_model(kind)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))      # past zero-initialised output layers
    model.save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", prediction_type=prediction,
                  clip_sample=False).save_pretrained(folder / "scheduler")


CASES = [("UNet2DModel", "epsilon"), ("UNet2DModel", "v_prediction"), ("DiTTransformer2DModel", "epsilon")]


@pytest.fixture(scope="module", params=CASES, ids=lambda case: "-".join(case))
def model_folder(tmp_path_factory, request):
    kind, prediction = request.param
    folder = tmp_path_factory.mktemp(f"{kind}_{prediction}")
    save_model(folder, kind, prediction)
    return folder, kind


def build_teacher(folder, kind: str):
    entry = TEACHERS.get("diffusers", "teacher.kind")
    return entry.builder(entry.options(path=str(folder), model_class=kind), None)


def test_the_schedule_and_clean_prediction_are_the_schedulers(model_folder):
    folder, kind = model_folder
    teacher = build_teacher(folder, kind)
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    unet = {"UNet2DModel": UNet2DModel, "DiTTransformer2DModel": DiTTransformer2DModel}[kind].from_pretrained(
        folder, subfolder="unet", local_files_only=True)
    torch.manual_seed(1)
    x0, eps, labels = torch.randn(5, 1, 8, 8), torch.randn(5, 1, 8, 8), torch.tensor([0, 3, 5, 7, 9])
    for k in [0, 1, 10, 500, 998, 999]:
        steps = torch.full((5,), k)
        t = torch.full((5,), k / 999)
        x_t = scheduler.add_noise(x0, eps, steps)
        torch.testing.assert_close(teacher.schedule.add_noise(x0, eps, t), x_t, rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            output = unet(x_t, steps, class_labels=labels).sample[:, :1]
            expected = torch.stack([scheduler.step(output[i:i + 1], k, x_t[i:i + 1]).pred_original_sample[0]
                                    for i in range(5)])
            torch.testing.assert_close(teacher.x0(x_t, t, labels), expected, rtol=1e-4, atol=1e-5)


def test_a_zero_terminal_snr_table_ends_at_the_euler_schedulers_floor(tmp_path):
    save_model(tmp_path, "UNet2DModel", "v_prediction")
    DDPMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction", clip_sample=False,
                  rescale_betas_zero_snr=True).save_pretrained(tmp_path / "scheduler")
    teacher = build_teacher(tmp_path, "UNet2DModel")
    scheduler = DDPMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    x0, eps = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    for k in [0, 500, 998]:
        torch.testing.assert_close(teacher.schedule.add_noise(x0, eps, torch.full((2,), k / 999)),
                                   scheduler.add_noise(x0, eps, torch.full((2,), k)), rtol=1e-5, atol=1e-6)
    t = torch.tensor([1.0, 998.5 / 999])
    assert teacher.schedule.alpha(t)[0] == 2.0**-12 and teacher.schedule.alpha(t).isfinite().all()
    with torch.no_grad():
        assert teacher.x0(torch.randn(2, 1, 8, 8), t, torch.tensor([1, 2])).isfinite().all()


def test_dits_null_class_guides_and_its_student_keeps_every_label(tmp_path):
    save_model(tmp_path, "DiTTransformer2DModel", "epsilon")
    teacher = build_teacher(tmp_path, "DiTTransformer2DModel")
    torch.manual_seed(2)
    x_t, t, labels = torch.randn(64, 1, 8, 8), torch.full((64,), 0.5), torch.arange(64) % 10
    with torch.no_grad():
        conditional, unconditional = teacher.x0(x_t, t, labels), teacher.x0(x_t, t, torch.full((64,), 10))
        torch.testing.assert_close(teacher.x0(x_t, t, labels, guidance=3.0),
                                   unconditional + 3 * (conditional - unconditional))
        student = teacher.train()
        torch.testing.assert_close(student.x0(x_t, t, labels), conditional)


def test_dmd2_with_a_feature_discriminator_trains_on_it(model_folder):
    folder, kind = model_folder
    config = load_config(data={
        "modality": {"kind": "image", "classifier": None},
        "teacher": {"kind": "diffusers", "path": str(folder), "model_class": kind},
        "generator": {"kind": "denoiser", "times": [1.0]},
        "fake_score": "teacher_copy",
        "objective": "dmd2",
        "adversary": {"kind": "feature_gan", "network": "fake_score", "layers": [0, -1]},
        "real_data": "digits",
        "train": {"steps": 2, "batch_size": 4, "progress": False, "generator_every": 1},
    })
    distiller = Distiller(config)
    before = [p.detach().clone() for p in distiller.generator.parameters()]
    distiller.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, distiller.generator.parameters(), strict=True))
    assert distiller.teacher.sample_shape == (1, 8, 8) and distiller.teacher.num_classes == 10


def test_bad_folders_and_classes_are_named(tmp_path):
    save_model(tmp_path / "unet_folder", "UNet2DModel", "epsilon")
    unet_folder = tmp_path / "unet_folder"
    entry = TEACHERS.get("diffusers", "teacher.kind")
    with pytest.raises(FileNotFoundError, match=r"teacher\.path: .* is not a folder"):
        entry.builder(entry.options(path=str(tmp_path / "none")), None)
    with pytest.raises(ConfigError, match=r"teacher\.model_class: 'Flux' is not supported yet"):
        entry.builder(entry.options(path=str(unet_folder), model_class="Flux"), None)
    with pytest.raises(ConfigError, match=r"teacher\.path: no config.json in .*; set teacher\.subfolder"):
        entry.builder(entry.options(path=str(tmp_path)), None)
    with pytest.raises(ConfigError, match=r"teacher\.path: .*unet does not hold a whole DiTTransformer2DModel "
                                          r"\(missing keys: .*unexpected keys: .*right folder and class"):
        entry.builder(entry.options(path=str(unet_folder), model_class="DiTTransformer2DModel"), None)
    with pytest.raises(ValueError, match=r"guidance: this diffusers UNet2DModel has no null class"):
        build_teacher(unet_folder, "UNet2DModel").x0(torch.zeros(1, 1, 8, 8), torch.full((1,), 0.5),
                                                     torch.tensor([1]), guidance=2.0)
