"""`potstill export RUN --diffusers OUT_DIR` (core/diffusers_export.py) on tiny random models: a LoRA student of a
Stable-Diffusion-like teacher exports as a StableDiffusionPipeline folder whose UNet is the adapted one with the
adapters merged (no peft left), and that pipeline's one-step sample is the student's own; an unconditional UNet
student exports as a DDIMPipeline that samples as the student does; an SD3 pipeline folder's student, distilled
from its path alone (its own text encoders read as the pipeline reads them), exports as a StableDiffusion3Pipeline
whose flow-matching scheduler samples as the student, and a Wan folder's as a WanPipeline; what cannot export is
named."""

import json
from types import SimpleNamespace

import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDPMScheduler,
    LCMScheduler,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    UNet2DModel,
    WanPipeline,
)
from diffusers_fixtures import perturb, save_sd3_pipeline, save_sd_like, save_wan_pipeline

from potstill.cli import main
from potstill.core.config import load_config
from potstill.core.diffusers_export import student_parts, student_timesteps
from potstill.runs import distill, open_run

PROMPTS = ["a handwritten digit one", "a handwritten digit seven"]
LORA = {"rank": 2, "alpha": 2.0, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
QUICK = {"steps": 2, "batch_size": 4, "progress": False, "generator_every": 1, "sample_every": 0,
         "checkpoint_every": 0}


def text_run(sd_folder, times: list[float]):
    return load_config(data={
        "modality": {"kind": "image", "classifier": None, "prompts": PROMPTS},
        "text_encoder": {"kind": "transformers", "path": str(sd_folder)},
        "teacher": {"kind": "diffusers", "path": str(sd_folder), "model_class": "UNet2DConditionModel"},
        "codec": {"kind": "diffusers_vae", "path": str(sd_folder)},
        "generator": {"kind": "denoiser", "times": times, "lora": LORA},
        "fake_score": {"kind": "teacher_copy", "lora": LORA},
        "objective": "dmd2",
        "train": QUICK,
        "eval": {"n_samples": 8, "batch_size": 8},
    })


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    sd_folder = save_sd_like(folder / "teacher")
    distill(text_run(sd_folder, [1.0]), folder / "run")
    main(["export", str(folder / "run"), "--diffusers", str(folder / "out")])
    return folder


def test_the_pipeline_unet_is_the_adapted_student_with_adapters_merged(exported):
    pipeline = StableDiffusionPipeline.from_pretrained(exported / "out", local_files_only=True)
    assert isinstance(pipeline.scheduler, LCMScheduler)
    assert not any("lora" in name for name in pipeline.unet.state_dict())
    student = open_run(exported / "run", "cpu").ema.model.denoiser.backbone.model
    assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in student.state_dict().items())
    torch.manual_seed(5)
    x, tokens = torch.randn(3, 2, 4, 4), torch.randn(3, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(pipeline.unet(x, torch.tensor([999, 500, 3]), encoder_hidden_states=tokens).sample,
                                   student(x, torch.tensor([999, 500, 3]), encoder_hidden_states=tokens).sample,
                                   rtol=1e-5, atol=1e-6)


def test_the_pipelines_one_step_sample_is_the_students(exported):
    record = json.loads((exported / "out" / "potstill_student.json").read_text())
    assert record["pipeline_class"] == "StableDiffusionPipeline" and record["timesteps"] == [999]
    pipeline = StableDiffusionPipeline.from_pretrained(exported / "out", local_files_only=True)
    run = open_run(exported / "run", "cpu")
    noise = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = run.ema.model.sample(noise, run.text_encoder.encode(PROMPTS))
        latents = pipeline(PROMPTS, num_inference_steps=1, guidance_scale=record["guidance_scale"],
                           latents=record["first_noise_scale"] * noise, output_type="latent").images
        images = pipeline(PROMPTS, num_inference_steps=1, guidance_scale=record["guidance_scale"],
                          latents=record["first_noise_scale"] * noise, output_type="pt").images
    torch.testing.assert_close(latents, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(images * 2 - 1, run.modality.decode(expected).clamp(-1, 1), rtol=1e-4, atol=1e-4)


def test_a_two_step_student_records_its_timesteps(exported, tmp_path):
    distill(text_run(exported / "teacher", [1.0, 499 / 999]), tmp_path / "run")
    main(["export", str(tmp_path / "run"), "--diffusers", str(tmp_path / "out")])
    record = json.loads((tmp_path / "out" / "potstill_student.json").read_text())
    assert record["timesteps"] == [999, 499]
    pipeline = StableDiffusionPipeline.from_pretrained(tmp_path / "out", local_files_only=True)
    pipeline.scheduler.set_timesteps(timesteps=record["timesteps"])
    assert pipeline.scheduler.timesteps.tolist() == [999, 499]
    with torch.no_grad():       # the README's lines
        images = pipeline(PROMPTS, num_inference_steps=len(record["timesteps"]), timesteps=record["timesteps"],
                          guidance_scale=record["guidance_scale"], output_type="pt").images
    assert images.shape == (2, 1, 8, 8) and images.isfinite().all()


def test_an_unconditional_unet_student_exports_as_a_ddim_pipeline(tmp_path):
    torch.manual_seed(0)
    perturb(UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
                        down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, norm_num_groups=8)
            ).save_pretrained(tmp_path / "teacher" / "unet")
    DDPMScheduler(beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False).save_pretrained(
        tmp_path / "teacher" / "scheduler")
    distill(load_config(data={
        "modality": {"kind": "image", "classifier": None},
        "teacher": {"kind": "diffusers", "path": str(tmp_path / "teacher")},
        "generator": {"kind": "denoiser", "times": [1.0]},
        "fake_score": "teacher_copy",
        "objective": "dmd2",
        "train": QUICK,
        "eval": {"n_samples": 8, "batch_size": 8},
    }), tmp_path / "run")
    main(["export", str(tmp_path / "run"), "--diffusers", str(tmp_path / "out")])
    pipeline = DDIMPipeline.from_pretrained(tmp_path / "out", local_files_only=True)
    run = open_run(tmp_path / "run", "cpu")
    scale = json.loads((tmp_path / "out" / "potstill_student.json").read_text())["first_noise_scale"]
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(7))      # the draw the pipeline makes
    with torch.no_grad():
        expected = run.ema.model.sample(noise / scale)
        images = pipeline(batch_size=3, generator=torch.Generator().manual_seed(7), num_inference_steps=1,
                          output_type="np").images
    torch.testing.assert_close(torch.from_numpy(images).permute(0, 3, 1, 2), (expected / 2 + 0.5).clamp(0, 1),
                               rtol=1e-4, atol=1e-5)


def path_alone_and_exported(pipeline_folder, folder, modality: str, **teacher) -> None:
    """DMD2 with LoRA on the attention's q and v, from the pipeline folder's path alone, into folder/run; exported to
    folder/out."""
    lora = {**LORA, "target_modules": ["to_q", "to_v"]}
    distill(load_config(data={
        "modality": {"kind": modality, "classifier": None, "prompts": PROMPTS},
        "teacher": {"kind": "diffusers", "path": str(pipeline_folder), **teacher},
        "generator": {"kind": "denoiser", "times": [1.0], "lora": lora},
        "fake_score": {"kind": "teacher_copy", "lora": lora},
        "objective": "dmd2",
        "train": QUICK,
        "eval": {"n_samples": 4, "batch_size": 4},
    }), folder / "run")
    main(["export", str(folder / "run"), "--diffusers", str(folder / "out")])


@pytest.fixture(scope="module")
def sd3_exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd3_export")
    path_alone_and_exported(save_sd3_pipeline(folder), folder, "image")
    return folder


def test_an_sd3_folders_own_text_encoders_are_read_as_its_pipeline_reads_them(sd3_exported):
    run = open_run(sd3_exported / "run", "cpu")
    pipeline = StableDiffusion3Pipeline.from_pretrained(sd3_exported / "pipeline", local_files_only=True)
    with torch.no_grad():
        states, null_states, pooled, null_pooled = pipeline.encode_prompt(PROMPTS, None, None)
    layout = run.text_encoder.layout
    torch.testing.assert_close(layout.split(run.text_encoder.encode(PROMPTS)), (states, pooled))
    torch.testing.assert_close(layout.split(run.text_encoder.null.expand(2, -1, -1)), (null_states, null_pooled))


def test_an_sd3_students_pipeline_samples_as_the_student(sd3_exported):
    record = json.loads((sd3_exported / "out" / "potstill_student.json").read_text())
    assert record["pipeline_class"] == "StableDiffusion3Pipeline" and record["sigmas"] == [1.0]
    pipeline = StableDiffusion3Pipeline.from_pretrained(sd3_exported / "out", local_files_only=True)
    assert pipeline.scheduler.config.stochastic_sampling and pipeline.scheduler.config.shift == 1.0
    run = open_run(sd3_exported / "run", "cpu")
    noise = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = run.ema.model.sample(noise, run.text_encoder.encode(PROMPTS))
        latents = pipeline(PROMPTS, sigmas=record["sigmas"], guidance_scale=record["guidance_scale"],
                           latents=noise, output_type="latent").images
        images = pipeline(PROMPTS, sigmas=record["sigmas"], guidance_scale=record["guidance_scale"],
                          latents=noise, output_type="pt").images
    torch.testing.assert_close(latents, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(images * 2 - 1, run.modality.decode(expected).clamp(-1, 1), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def wan_exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan_export")
    path_alone_and_exported(save_wan_pipeline(folder), folder, "video", sample_shape=[2, 3, 4, 4])
    return folder


def test_a_wan_folders_t5_is_read_as_wans_pipeline_reads_it_and_its_student_samples_through_it(wan_exported):
    run = open_run(wan_exported / "run", "cpu")
    pipeline = WanPipeline.from_pretrained(wan_exported / "pipeline", local_files_only=True)
    with torch.no_grad():
        states, null_states = pipeline.encode_prompt(PROMPTS, do_classifier_free_guidance=True,
                                                     max_sequence_length=512)      # what its __call__ passes
    torch.testing.assert_close(run.text_encoder.encode(PROMPTS), states)
    torch.testing.assert_close(run.text_encoder.null.expand(2, -1, -1), null_states)
    record = json.loads((wan_exported / "out" / "potstill_student.json").read_text())
    assert record["pipeline_class"] == "WanPipeline" and record["sigmas"] == [1.0]
    exported = WanPipeline.from_pretrained(wan_exported / "out", local_files_only=True)
    noise = torch.randn(2, 2, 3, 4, 4, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected = run.ema.model.sample(noise, run.text_encoder.encode(PROMPTS))
        latents = exported(PROMPTS, height=16, width=16, num_frames=5, num_inference_steps=1,  # sides: its check
                           guidance_scale=record["guidance_scale"], latents=noise, output_type="latent").frames
    torch.testing.assert_close(latents, expected, rtol=1e-4, atol=1e-5)


def test_what_cannot_export_is_named():
    dit_run = SimpleNamespace(config=SimpleNamespace(teacher=SimpleNamespace(kind="dit")))
    with pytest.raises(ValueError, match="export --diffusers: the run's teacher is 'dit'"):
        student_parts(dit_run)
    with pytest.raises(ValueError, match=r"the student's times \[0.9995"):
        student_timesteps(SimpleNamespace(times=torch.tensor([0.9995])), 1000)
    with pytest.raises(SystemExit):
        main(["export", "runs/none"])
