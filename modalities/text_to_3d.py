"""The `text_to_3d` modality: a 2-D teacher conditioned on a view (what and from where) distilled into a 3-D field
(`generator.kind: field`). A sample is a batch of rendered views [B, 3, S, S] in [-1, 1]; its condition names the
subject and the cameras threestudio's random sampler drew. With a teacher trained on `shapes3d` the views and
the field are scored against the analytic shape; with the exact Gaussian teacher (`gmm`) and `field: identity`
the samples are vectors whose fixed points SDS, VSD and CFD are known in closed form. `noise: consistent` makes
objectives read CFD's consistent noise instead of i.i.d. noise."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torchvision.utils import save_image

from potstill.backbones.cameras import CameraOptions, sample_cameras, sphere_cameras
from potstill.backbones.text_encoders import text_encoder_from_section
from potstill.backbones.view_dit import condition_cameras, view_condition
from potstill.core.config import AT_LEAST_1, RULES, ConfigError, Rule, from_dict
from potstill.core.modality import Modality, teacher_text_dim
from potstill.core.registry import MODALITIES
from potstill.core.teacher_file import teacher_data
from potstill.data.shapes3d import ShapesOptions, ShapeSpec, render_shape
from potstill.modalities.consistent_noise import ConsistentNoise, ConsistentNoiseOptions
from potstill.modalities.field_generator import FieldGenerator, IdentityGenerator
from potstill.modalities.gaussian_mixture import GaussianMixtureDenoiser
from potstill.modalities.shape_scores import analytic_surface, silhouette_iou, surface_scores
from potstill.modalities.view_noise import ParticleNoise, SurfaceNoise

INK = 0.25          # a view pixel is the shape's where some channel sits this far below the white background


@dataclass
class TextTo3DOptions:
    """`shape`: the subject, by name among the teacher's shapes (null: its only one); or `prompt`, any text, for a
    teacher conditioned on text (scored against the analytic shape whose caption it is, if any). `cameras`: the
    ranges views are drawn from (null: the teacher's). `noise`: `iid`, or `consistent` (CFD); `consistent_noise` its
    settings, `noise_seed` its texels' seed. `eval_cameras` views all round at `eval_image_size` give the 3-D scores,
    with F-score counting points within `f_score_threshold` of the shape's largest extent."""

    shape: str | None = None
    prompt: str | None = None
    cameras: CameraOptions | None = None
    noise: Literal["iid", "consistent"] = "iid"
    consistent_noise: ConsistentNoiseOptions = field(default_factory=ConsistentNoiseOptions)
    noise_seed: int = 0
    eval_cameras: int = 24
    eval_image_size: int = 64
    f_score_threshold: float = 0.05


RULES[TextTo3DOptions] = {"eval_cameras": AT_LEAST_1, "eval_image_size": AT_LEAST_1,
                          "f_score_threshold": Rule(lambda v: v > 0, "greater than 0")}


def teacher_shapes(teacher) -> ShapesOptions | None:
    """The shapes a `shapes3d` teacher was trained on, from its file's metadata (None for other teachers)."""
    data = teacher_data(teacher, "shapes3d")
    return None if data is None else from_dict(ShapesOptions, data, "teacher metadata data")


def teacher_text_encoder(teacher, text_encoder):
    """The run's text encoder, else the one the teacher's file records (a text teacher was trained with it)."""
    if text_encoder is not None:
        return text_encoder
    section = (getattr(teacher, "metadata", None) or {}).get("text_encoder")
    if section is None:
        raise ConfigError("text_encoder: this text teacher's file records no text encoder; set the run's "
                          "text_encoder section")
    return text_encoder_from_section(section)


class TextTo3DModality(Modality):
    def __init__(self, options: TextTo3DOptions, teacher, text_encoder=None) -> None:
        self.options = options
        self.sample_shape = tuple(teacher.sample_shape)
        self.vectors = isinstance(teacher, GaussianMixtureDenoiser)
        self.shapes = teacher_shapes(teacher)
        if self.vectors:
            self.mixture = teacher.mixture
            for key in ("shape", "prompt"):
                if getattr(options, key) is not None:
                    raise ConfigError(f"modality.{key}: the Gaussian teacher is unconditional; remove the key")
            return
        if self.shapes is None:
            raise ConfigError("teacher: the text_to_3d modality needs a view teacher trained on shapes3d "
                              "(`potstill train-teacher configs/text_to_3d/shapes_teacher.yaml`) or the exact "
                              "Gaussian teacher `gmm`")
        self.label, self.spec = self._subject(options)
        self.text = self._text(options, teacher, text_encoder)
        self.cameras = options.cameras or self.shapes.cameras
        self.data_range = (-1.0, 1.0)

    def _subject(self, options: TextTo3DOptions) -> tuple[int, ShapeSpec | None]:
        """The class index and the analytic shape to score against (None for a prompt no shape has)."""
        specs = self.shapes.specs
        if options.prompt is not None:
            if options.shape is not None:
                raise ConfigError("modality.shape, modality.prompt: name the subject one way, not both")
            found = [k for k, spec in enumerate(specs) if spec.caption == options.prompt]
            return (found[0], specs[found[0]]) if found else (0, None)
        if options.shape is None and len(specs) > 1:
            raise ConfigError(f"modality.shape: this teacher knows {len(specs)} shapes; name one of "
                              f"{', '.join(s.name for s in specs)}")
        label = self.shapes.index(options.shape, "modality.shape") if options.shape is not None else 0
        return label, specs[label]

    def _text(self, options: TextTo3DOptions, teacher, text_encoder) -> torch.Tensor | None:
        """The subject's text embedding [D] for a text teacher (the prompt's, or the named shape's caption's)."""
        text_dim = teacher_text_dim(teacher)
        if not text_dim:
            if options.prompt is not None:
                names = ", ".join(s.name for s in self.shapes.specs)
                raise ConfigError(f"modality.prompt: this teacher is conditioned on shape labels, not text; name "
                                  f"its subject with modality.shape (one of {names}), or train a text teacher "
                                  "(configs/text_to_3d/shapes_text_teacher.yaml)")
            return None
        encoder = teacher_text_encoder(teacher, text_encoder)
        if encoder.dim != text_dim:
            raise ConfigError(f"text_encoder: the teacher takes text embeddings of width {text_dim}, this text "
                              f"encoder makes {encoder.dim}")
        return encoder.encode([options.prompt if options.prompt is not None else self.spec.caption])[0]

    @property
    def sample_formats(self) -> tuple[str, ...]:
        return (".pt",) if self.vectors else (".png",)

    def draw_inputs(self, n: int, generator: torch.Generator | None = None):
        noise = torch.randn(n, *self.sample_shape, generator=generator)
        if self.vectors:
            return noise, None
        cameras = sample_cameras(n, self.cameras, generator)
        text = None if self.text is None else self.text.expand(n, -1)
        return noise, view_condition(torch.full((n,), self.label), cameras, text)

    def save_samples(self, samples: torch.Tensor, cond, path: Path) -> Path:
        path = path.with_suffix(path.suffix or self.sample_formats[0])
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".pt":
            torch.save(samples, path)
        else:
            save_image((samples.clamp(-1, 1) + 1) / 2, path, nrow=8, padding=1, pad_value=0.5)
        return path

    def headline_metric(self) -> str:
        return "mean_error" if self.vectors else "view_error"

    def evaluate(self, samples: torch.Tensor, cond) -> dict[str, float]:
        """Vectors: the distance of their mean from the Gaussian's, and their spread. Views: their distance from
        the exact render of the shape from the same cameras (mean absolute error in [0, 1]), the silhouette IoU,
        and the colour error where both show the shape; nothing for a prompt no analytic shape has."""
        if self.vectors:
            return {"mean_error": float((samples.mean(0) - self.mixture.means[0]).norm()),
                    "std": float(samples.std(0).mean())}
        if self.spec is None:
            return {}
        exact, silhouette, _ = render_shape(self.spec, condition_cameras(cond.cpu()), self.sample_shape[-1])
        unit = (samples.clamp(-1, 1) + 1) / 2
        inked = (1 - unit).amax(1) > INK
        both = (inked & silhouette).unsqueeze(1).expand_as(unit)
        colour = torch.tensor(self.spec.color)[None, :, None, None].expand_as(unit)
        colour_error = float((unit - colour).abs()[both].mean()) if both.any() else 1.0
        return {"view_error": float((unit - exact).abs().mean()), "silhouette_iou": silhouette_iou(inked, silhouette),
                "colour_error": colour_error}

    def generator_metrics(self, generator) -> dict[str, float]:
        """A field's own shape, seen from `eval_cameras` views all round: its surface points against the shape's
        (Chamfer, F-score), its silhouettes against the shape's, and its colour on its surface."""
        if not isinstance(generator, FieldGenerator) or self.vectors or self.spec is None:
            return {}
        o = self.options
        cameras = sphere_cameras(o.eval_cameras)
        with torch.no_grad():
            rendered = generator.render_views(cameras, o.eval_image_size)
        points, colours = generator.surface_cloud(rendered)
        truth = analytic_surface(self.spec, cameras, o.eval_image_size)
        scores = surface_scores(points.cpu(), truth, o.f_score_threshold * max(self.spec.size))
        opacity = rendered.opacity.cpu()
        _, silhouette, _ = render_shape(self.spec, cameras, o.eval_image_size)
        colour_error = (float((colours.cpu() - torch.tensor(self.spec.color)).abs().mean()) if len(colours)
                        else 1.0)
        return {**scores, "field_iou": silhouette_iou(opacity > 0.5, silhouette),
                "surface_colour_error": colour_error}

    def noise_source(self, generator):
        """CFD's consistent noise when `noise: consistent` (i.i.d. otherwise): multi-view consistent for a 3-D
        field, one fixed noise per sample for the identity field."""
        o = self.options
        if o.noise == "iid":
            return None
        c = o.consistent_noise
        if isinstance(generator, IdentityGenerator):
            return ParticleNoise(len(generator.field.values), self.sample_shape, lambda: generator.last_index,
                                 o.noise_seed, c.refresh, c.sqrt_beta)
        if isinstance(generator, FieldGenerator):
            size = self.sample_shape[1:]
            noise = ConsistentNoise(c, self.sample_shape[0], size, generator.renderer.radius, o.noise_seed)
            return SurfaceNoise(noise, lambda: generator.last_render, o.noise_seed)
        raise ConfigError(f"modality.noise: consistent noise is built from the depth a field renders, and a "
                          f"{type(generator).__name__} renders none; use generator.kind: field")


MODALITIES.register("text_to_3d", TextTo3DOptions)(
    lambda options, context: TextTo3DModality(options, context.teacher, context.text_encoder))
