"""Text-conditioned diffusers transformers as teachers, on tiny random models (tests/diffusers_fixtures.py): an
SD3-like transformer under a flow-matching scheduler with a static shift (its x_t is the scheduler's `scale_noise`,
its x0 the model's velocity read at 1000 t, its guidance against the empty prompt of two CLIPs and a T5), and a
PixArt-like transformer with learned variance under a DPM-Solver config's beta table (x0 from the epsilon half);
DMD2 with LoRA adapters trains on both, and their blocks' features are the image tokens; a Wan-like video
transformer under Wan's UniPC flow-sigma scheduler is its velocity at the scheduler's own noise law, and distils
clips from prompts."""

import pytest
import torch
from diffusers import (
    AutoencoderKLWan,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    UniPCMultistepScheduler,
    WanTransformer3DModel,
)
from diffusers_fixtures import save_pixart_like, save_sd3_like, save_wan_like

from potstill.core.config import ConfigError, load_config
from potstill.core.diffusers_schedule import load_scheduler_schedule
from potstill.core.diffusers_vae import DiffusersVAECodec, DiffusersVAEOptions
from potstill.core.distiller import Distiller
from potstill.core.schedules import FlowSchedule

PROMPTS = ["a handwritten digit one", "a handwritten digit seven"]
LORA = {"rank": 2, "alpha": 2.0, "target_modules": ["to_q", "to_k", "to_v"]}


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    return save_sd3_like(tmp_path_factory.mktemp("sd3_like"))


@pytest.fixture(scope="module")
def pixart_folder(tmp_path_factory):
    return save_pixart_like(tmp_path_factory.mktemp("pixart_like"))


def run_config(folder, text_encoder: dict | None = None, steps: int = 2):
    return load_config(data={
        "modality": {"kind": "image", "classifier": None, "prompts": PROMPTS},
        "teacher": {"kind": "diffusers", "path": str(folder)},
        "text_encoder": text_encoder,
        "generator": {"kind": "denoiser", "times": [1.0], "lora": LORA},
        "fake_score": {"kind": "teacher_copy", "lora": LORA},
        "objective": "dmd2",
        "train": {"steps": steps, "batch_size": 2, "progress": False, "generator_every": 1},
    })


SD3_TEXT = {"kind": "transformers", "encoders": [
    {"subfolder": "text_encoder", "tokenizer_subfolder": "tokenizer", "hidden_layer": -2},
    {"subfolder": "text_encoder_2", "tokenizer_subfolder": "tokenizer_2", "hidden_layer": -2},
    {"subfolder": "text_encoder_3", "tokenizer_subfolder": "tokenizer_3", "max_length": 12}]}


def sd3_run(folder, steps: int = 2) -> Distiller:
    return Distiller(run_config(folder, {**SD3_TEXT, "path": str(folder)}, steps))


def test_the_flow_matching_schedule_is_the_schedulers(sd3_folder):
    schedule, prediction = load_scheduler_schedule(sd3_folder, "scheduler")
    assert isinstance(schedule, FlowSchedule) and prediction == "flow" and schedule.options.shift == 3.0
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(sd3_folder, subfolder="scheduler")
    scheduler.set_timesteps(20)
    x0, eps = torch.randn(5, 2, 4, 4), torch.randn(5, 2, 4, 4)
    for timestep, sigma in zip(scheduler.timesteps[::4], scheduler.sigmas[:-1][::4], strict=True):
        t = torch.full((5,), float(sigma))
        torch.testing.assert_close(schedule.add_noise(x0, eps, t), scheduler.scale_noise(x0, timestep[None], eps))
        torch.testing.assert_close(schedule.c_noise(t), timestep.expand(5))


def test_the_sd3_teacher_reads_the_velocity_and_guides_against_the_empty_prompt(sd3_folder):
    run = sd3_run(sd3_folder)
    teacher, encoder = run.teacher, run.text_encoder
    model = SD3Transformer2DModel.from_pretrained(sd3_folder, subfolder="transformer")
    cond, null = encoder.encode(PROMPTS), encoder.encode(["", ""])
    states, pooled = encoder.layout.split(cond)
    null_states, null_pooled = encoder.layout.split(null)
    x_t, sigma = torch.randn(2, 2, 4, 4), torch.tensor([0.9, 0.3])
    with torch.no_grad():
        velocity = model(x_t, encoder_hidden_states=states, pooled_projections=pooled, timestep=1000 * sigma).sample
        expected = x_t - sigma[:, None, None, None] * velocity
        torch.testing.assert_close(teacher.x0(x_t, sigma, cond), expected, rtol=1e-4, atol=1e-5)
        velocity = model(x_t, encoder_hidden_states=null_states, pooled_projections=null_pooled,
                         timestep=1000 * sigma).sample
        unconditional = x_t - sigma[:, None, None, None] * velocity
        torch.testing.assert_close(teacher.x0(x_t, sigma, cond, guidance=3.0),
                                   unconditional + 3 * (expected - unconditional), rtol=1e-4, atol=1e-4)


def test_the_pixart_teacher_is_the_schedulers_prediction_from_the_epsilon_half(pixart_folder):
    run = Distiller(run_config(pixart_folder, steps=1))
    scheduler = DDPMScheduler.from_pretrained(pixart_folder, subfolder="scheduler", clip_sample=False)
    model = PixArtTransformer2DModel.from_pretrained(pixart_folder, subfolder="transformer")
    cond = run.text_encoder.encode(PROMPTS)
    x0, eps = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)
    with torch.no_grad():
        for k in [0, 250, 999]:
            x_t = scheduler.add_noise(x0, eps, torch.full((2,), k))
            output = model(x_t, encoder_hidden_states=cond, timestep=torch.full((2,), k),
                           added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample[:, :2]
            expected = torch.stack([scheduler.step(output[i:i + 1], k, x_t[i:i + 1]).pred_original_sample[0]
                                    for i in range(2)])
            torch.testing.assert_close(run.teacher.x0(x_t, torch.full((2,), k / 999), cond), expected,
                                       rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("which", ["sd3", "pixart"])
def test_dmd2_with_lora_trains_on_the_transformer_whose_features_are_the_image_tokens(which, sd3_folder,
                                                                                      pixart_folder):
    run = sd3_run(sd3_folder) if which == "sd3" else Distiller(run_config(pixart_folder))
    cond = run.text_encoder.encode(PROMPTS)
    with torch.no_grad():
        _, features = run.teacher.backbone(torch.randn(2, 2, 4, 4), torch.full((2,), 500.0), cond, features=[0, -1])
    assert [f.shape for f in features] == [(2, 4, features[0].shape[-1])] * 2      # 2x2 patches, not text tokens
    trained = {n: p.detach().clone() for n, p in run.generator.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    run.train()
    parameters = dict(run.generator.named_parameters())
    assert any(not torch.equal(parameters[n], v) for n, v in trained.items())


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    return save_wan_like(tmp_path_factory.mktemp("wan_like"))


def wan_run(folder, steps: int = 2) -> Distiller:
    return Distiller(load_config(data={
        "modality": {"kind": "video", "classifier": None, "prompts": PROMPTS},
        "teacher": {"kind": "diffusers", "path": str(folder), "sample_shape": [2, 3, 4, 4]},
        "generator": {"kind": "denoiser", "times": [1.0], "lora": LORA},
        "fake_score": {"kind": "teacher_copy", "lora": LORA},
        "objective": "dmd2",
        "train": {"steps": steps, "batch_size": 2, "progress": False, "generator_every": 1},
    }))


def test_the_wan_teacher_is_its_unipc_flow_schedule_and_velocity(wan_folder):
    run = wan_run(wan_folder)
    schedule = run.teacher.schedule
    assert isinstance(schedule, FlowSchedule) and schedule.options.shift == 3.0
    scheduler = UniPCMultistepScheduler.from_pretrained(wan_folder, subfolder="scheduler")
    scheduler.set_timesteps(10)
    model = WanTransformer3DModel.from_pretrained(wan_folder, subfolder="transformer")
    cond = run.text_encoder.encode(PROMPTS)
    x0, eps = torch.randn(2, 2, 3, 4, 4), torch.randn(2, 2, 3, 4, 4)
    with torch.no_grad():
        for timestep, sigma in zip(scheduler.timesteps[::3], scheduler.sigmas[:-1][::3], strict=True):
            t = torch.full((2,), float(sigma))
            x_t = scheduler.add_noise(x0, eps, timestep.expand(2))
            torch.testing.assert_close(schedule.add_noise(x0, eps, t), x_t)
            velocity = model(x_t, timestep=1000 * t, encoder_hidden_states=cond).sample
            torch.testing.assert_close(run.teacher.x0(x_t, t, cond), x_t - float(sigma) * velocity,
                                       rtol=1e-4, atol=1e-5)
    noise, drawn = run.draw_inputs(3, torch.Generator().manual_seed(0))
    assert noise.shape == (3, 2, 3, 4, 4) and drawn.shape == (3, 12, 24)
    with torch.no_grad():       # the folder's Wan VAE is the codec: samples decode to grey 5-frame clips
        assert run.modality.decode(run.generator.sample(noise, drawn)).shape == (3, 1, 5, 8, 8)
    trained = {n: p.detach().clone() for n, p in run.generator.named_parameters() if p.requires_grad}
    run.train()
    parameters = dict(run.generator.named_parameters())
    assert any(not torch.equal(parameters[n], v) for n, v in trained.items())


def test_the_wan_vae_codec_normalises_each_channel_as_wans_pipeline(wan_folder):
    codec = DiffusersVAECodec(DiffusersVAEOptions(path=str(wan_folder), model_class="AutoencoderKLWan"))
    vae = AutoencoderKLWan.from_pretrained(wan_folder, subfolder="vae")
    clips = torch.rand(2, 1, 5, 8, 8) * 2 - 1
    mean, std = torch.tensor([0.1, -0.2])[:, None, None, None], torch.tensor([2.0, 0.5])[:, None, None, None]
    with torch.no_grad():
        latents = codec.encode(clips)
        torch.testing.assert_close(latents, (vae.encode(clips).latent_dist.mode() - mean) / std)
        torch.testing.assert_close(codec.decode(latents), vae.decode(latents * std + mean).sample)
    assert codec.sample_shape((1, 5, 8, 8)) == (2, 3, 4, 4) and codec.data_shape((2, 3, 4, 4)) == (1, 5, 8, 8)
    with pytest.raises(ValueError, match="4 frames is not 1 \\+ a multiple of 2"):
        codec.sample_shape((1, 4, 8, 8))


def test_bad_flow_settings_are_named(sd3_folder, wan_folder, tmp_path):
    with pytest.raises(ConfigError, match=r"teacher\.sample_shape: this WanTransformer3DModel's config has no "
                                          r"sample_size"):
        Distiller(load_config(data={"modality": {"kind": "video", "classifier": None, "prompts": PROMPTS},
                                    "teacher": {"kind": "diffusers", "path": str(wan_folder)},
                                    "generator": {"kind": "denoiser", "times": [1.0]}, "objective": "sds"}))
    with pytest.raises(ConfigError, match="text_encoder: its pooled vectors are 0 wide; this SD3Transformer2DModel "
                                          "takes 22"):
        Distiller(run_config(sd3_folder, {"kind": "transformers", "path": str(sd3_folder), "encoders": [
            {"subfolder": "text_encoder_3", "tokenizer_subfolder": "tokenizer_3", "max_length": 12}]}))
    (tmp_path / "scheduler").mkdir()
    FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).save_pretrained(tmp_path / "scheduler")
    with pytest.raises(ConfigError, match="use_dynamic_shifting"):
        load_scheduler_schedule(tmp_path, "scheduler")
    with pytest.raises(ConfigError, match=r"teacher\.scheduler_subfolder: no readable scheduler config"):
        load_scheduler_schedule(tmp_path, "none")
