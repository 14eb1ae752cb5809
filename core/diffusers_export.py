"""`potstill export RUN --diffusers OUT_DIR`: a student distilled from a diffusers teacher, as a diffusers folder that
diffusers' own pipeline classes load. The EMA student's model (LoRA adapters merged into plain weights) replaces the
teacher's in a copy of the teacher's pipeline (its VAE, text encoders and tokenizers come along), with an
LCMScheduler on the teacher's beta table: LCM's step predicts x0 and re-noises it with fresh noise to the next
timestep, which is the student's own ping-pong sampler, and `timestep_scaling` is set so high that LCM's boundary
condition is the identity. A flow-matching teacher's student gets FlowMatchEulerDiscreteScheduler with
`stochastic_sampling` (x0, then fresh noise at the next sigma: the same sampler) and shift 1, so the sigmas given to
the pipeline are the student's times as they are. `potstill_student.json` records the timesteps (or sigmas), the
guidance scale and the first noise scale to give the pipeline (its latents are unit noise; a VP student's are
sigma(t_0) times that)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from potstill.core.diffusers_teacher import DiffusersBackbone, DiffusersTeacherOptions, locate_model
from potstill.core.generator import DenoiserGenerator
from potstill.core.lora import merged
from potstill.core.schedules import FlowSchedule

TIMESTEP_SCALING = 1e6      # LCM's c_skip = 0.25 / ((t * scaling)^2 + 0.25) is 0 and c_out is 1 in float32


def student_timesteps(generator: DenoiserGenerator, steps: int) -> list[int]:
    """The student's times as the scheduler's integer timesteps; times between them have no diffusers step."""
    timesteps = generator.times.double() * (steps - 1)
    if (timesteps - timesteps.round()).abs().max() > 1e-3:
        times = [round(t, 6) for t in generator.times.tolist()]
        raise ValueError(f"export --diffusers: the student's times {times} are not on the scheduler's {steps} "
                         f"timesteps, where diffusers steps; train with generator.times k / {steps - 1} for integers k")
    return [int(k) for k in timesteps.round().long().tolist()]


def student_parts(distiller) -> tuple[DenoiserGenerator, DiffusersBackbone, DiffusersTeacherOptions]:
    """The EMA student, its diffusers backbone and the teacher's folder settings, or an error saying what is not."""
    if distiller.config.teacher.kind != "diffusers":
        raise ValueError(f"export --diffusers: the run's teacher is {distiller.config.teacher.kind!r}; only a student "
                         "of a diffusers teacher (teacher.kind diffusers) exports as a diffusers folder")
    generator = distiller.ema.model
    backbone = getattr(getattr(generator, "denoiser", None), "backbone", None)
    if not isinstance(generator, DenoiserGenerator) or not isinstance(backbone, DiffusersBackbone):
        raise ValueError(f"export --diffusers: the student is a {type(generator).__name__}; a denoiser student "
                         "(generator.kind denoiser, a copy of the teacher) exports")
    return generator, backbone, distiller.config.teacher.options


def student_scheduler(options: DiffusersTeacherOptions, generator: DenoiserGenerator):
    """The scheduler whose step is the student's, and the record of the steps to give it."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LCMScheduler

    folder = Path(options.path).expanduser()
    times = generator.times
    if isinstance(generator.denoiser.schedule, FlowSchedule):
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(
            folder, subfolder=options.scheduler_subfolder, local_files_only=True, shift=1.0, stochastic_sampling=True)
        return scheduler, {"sigmas": [round(t, 6) for t in times.tolist()], "first_noise_scale": 1.0}
    scheduler = LCMScheduler.from_pretrained(folder, subfolder=options.scheduler_subfolder, local_files_only=True,
                                             timestep_scaling=TIMESTEP_SCALING, clip_sample=False, thresholding=False,
                                             set_alpha_to_one=True, timestep_spacing="trailing")
    first = float(generator.denoiser.schedule.sigma(times[:1].double()).item())
    return scheduler, {"timesteps": student_timesteps(generator, scheduler.config.num_train_timesteps),
                       "first_noise_scale": first}


@torch.no_grad()
def export_diffusers(distiller, out: Path) -> dict:
    """Write the folder; returns what `potstill_student.json` records."""
    import diffusers

    generator, backbone, options = student_parts(distiller)
    model = merged(backbone.model).cpu().eval()
    scheduler, steps = student_scheduler(options, generator)
    location = locate_model(options)
    teacher_folder, name = location.folder, location.subfolder or "unet"
    out = Path(out)
    if (teacher_folder / "model_index.json").is_file():
        pipeline = diffusers.DiffusionPipeline.from_pretrained(teacher_folder, local_files_only=True,
                                                               **{name: model, "scheduler": scheduler})
        pipeline.save_pretrained(out)
        pipeline_class = type(pipeline).__name__
    elif location.model_class == "UNet2DModel" and not model.config.num_class_embeds:
        diffusers.DDIMPipeline(unet=model, scheduler=scheduler).save_pretrained(out)
        pipeline_class = "DDIMPipeline"
    else:
        model.save_pretrained(out / name)
        scheduler.save_pretrained(out / "scheduler")
        pipeline_class = None
    record = {"pipeline_class": pipeline_class, **steps, "guidance_scale": float(generator.guidance), "model": name}
    (out / "potstill_student.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
