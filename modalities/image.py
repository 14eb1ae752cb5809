"""The `image` modality: DiT teachers (the embedded digits teacher, or a local DiT checkpoint),
class-conditional noise and labels, PNG grids, and the Frechet digits distance with per-class recall."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torchvision.utils import save_image

from potstill.backbones.digits_classifier import DigitsClassifier
from potstill.backbones.dit import PRESETS, DiT, DiTOptions
from potstill.core.config import from_dict
from potstill.core.denoiser import Denoiser, Prediction
from potstill.core.modality import Modality
from potstill.core.registry import MODALITIES, TEACHERS
from potstill.core.schedules import build_schedule
from potstill.data.digits import embedded_path, load_digits_tensors
from potstill.modalities.frechet import frechet_distance, gaussian_stats

EMBEDDED_PREFIX = "embedded:"
SHOWN_KEYS = 5      # differing parameter names a wrong-architecture error lists per kind


def embedded_names() -> list[str]:
    """The `embedded:NAME` choices: the weights shipped in `potstill/data/embedded/`."""
    folder = resources.files("potstill.data.embedded")
    return sorted(EMBEDDED_PREFIX + entry.name.removesuffix(".safetensors") for entry in folder.iterdir()
                  if entry.name.endswith(".safetensors"))


def resolve_weights(path: str, key: str) -> Path:
    """`embedded:NAME` names weights shipped in the package; anything else is a local file. Errors name `key`."""
    if path.startswith(EMBEDDED_PREFIX):
        if path not in embedded_names():
            raise ValueError(f"{key}: unknown embedded weights {path!r}; valid choices: {', '.join(embedded_names())}")
        return embedded_path(path[len(EMBEDDED_PREFIX):])
    resolved = Path(path).expanduser()
    if resolved.is_dir():
        raise ValueError(f"{key}: {resolved} is a directory, not a weights file")
    if not resolved.is_file():
        raise FileNotFoundError(f"{key}: {resolved} does not exist")
    return resolved


def read_state(path: Path, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and the `potstill` metadata (architecture, schedule, prediction) of a checkpoint file.
    `.safetensors` files are read directly; `.pt`/`.pth` files (the public DiT releases) with torch.load."""
    if path.suffix == ".safetensors":
        return read_safetensors(path, key)
    return read_torch_state(path, key), {}


def read_safetensors(path: Path, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A safetensors file's tensors and `potstill` metadata; a file of another format is an error naming `key`."""
    try:
        with safe_open(str(path), "pt") as f:
            metadata = json.loads((f.metadata() or {}).get("potstill", "{}"))
        return load_file(str(path)), metadata
    except (SafetensorError, json.JSONDecodeError) as error:
        raise ValueError(f"{key}: {path} is not a readable safetensors file ({error})") from None


def read_torch_state(path: Path, key: str) -> dict[str, torch.Tensor]:
    """The state dict of a torch checkpoint (its `ema` or `model` entry when it has one), loaded weights-only.
    torch.load fails in many ways on a file that is not one (KeyError, EOFError, UnpicklingError, ...), and
    says so over many lines, so any failure becomes one error naming `key`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{key}: {path} is neither a safetensors file nor a torch state dict of tensors "
                         f"(torch.load: {type(error).__name__})") from None
    if isinstance(state, dict):
        state = state.get("ema", state.get("model", state))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{key}: {path} holds no state dict of tensors")
    return state


def listed(names: list[str]) -> str:
    """The first SHOWN_KEYS names, then how many more."""
    more = f", and {len(names) - SHOWN_KEYS} more" if len(names) > SHOWN_KEYS else ""
    return ", ".join(names[:SHOWN_KEYS]) + more


def check_state(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], key: str, source: str,
                what: str) -> None:
    """Refuse weights of another architecture with one line: counts and the first differing parameter names,
    not torch's message that lists every one of them."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                if k in state and state[k].shape != v.shape]
    found = [(label, names) for label, names in [("missing", missing), ("unexpected", unexpected),
                                                 ("of another shape (checkpoint vs model)", reshaped)] if names]
    if found:
        problems = "; ".join(f"{len(names)} keys {label}: {listed(names)}" for label, names in found)
        raise ValueError(f"{key}: {source} does not match the {what} configuration ({problems})")


@dataclass
class DiTTeacherOptions:
    """A DiT teacher. Values left unset are read from the checkpoint's metadata (embedded weights carry
    them); for a public DiT-XL/2 file give `architecture: DiT-XL/2, schedule: vp_linear, prediction: eps`."""

    checkpoint: str = "embedded:digits_teacher"
    architecture: str | None = None
    dit: dict[str, Any] | None = None
    schedule: str | None = None
    schedule_options: dict[str, Any] | None = None
    prediction: Prediction | None = None
    sigma_data: float | None = None


def build_dit_denoiser(options: DiTTeacherOptions) -> Denoiser:
    state, meta = read_state(resolve_weights(options.checkpoint, "teacher.checkpoint"), "teacher.checkpoint")
    dit_values = dict(meta.get("dit", {}))
    if options.architecture is not None:
        if options.architecture not in PRESETS:
            raise ValueError(f"teacher.architecture: unknown {options.architecture!r}; valid: {', '.join(PRESETS)}")
        dit_values |= PRESETS[options.architecture]
    dit_values |= options.dit or {}
    dit_options = from_dict(DiTOptions, dit_values, "teacher.dit")
    with torch.device("meta"):
        expected = DiT(dit_options).state_dict()
    check_state(expected, state, "teacher.checkpoint", options.checkpoint, "DiT")
    backbone = DiT(dit_options)
    backbone.load_state_dict(state)
    schedule_name = options.schedule or meta.get("schedule", "edm")
    schedule_options = options.schedule_options if options.schedule_options is not None else meta.get(
        "schedule_options", {})
    schedule = build_schedule(schedule_name, schedule_options, "teacher.schedule")
    prediction = options.prediction or meta.get("prediction", "edm")
    sigma_data = options.sigma_data if options.sigma_data is not None else meta.get("sigma_data", 0.5)
    shape = (dit_options.in_channels, dit_options.input_size, dit_options.input_size)
    return Denoiser(backbone, schedule, prediction, sigma_data, shape, dit_options.num_classes)


TEACHERS.register("dit", DiTTeacherOptions)(lambda options, context: build_dit_denoiser(options))


def load_classifier(path: str) -> DigitsClassifier:
    """The scoring classifier from `modality.classifier`; every error names that key."""
    state, _ = read_state(resolve_weights(path, "modality.classifier"), "modality.classifier")
    classifier = DigitsClassifier()
    check_state(classifier.state_dict(), state, "modality.classifier", path, "digits classifier")
    classifier.load_state_dict(state)
    return classifier.eval().requires_grad_(False)


@dataclass
class ImageOptions:
    """`classifier` scores samples (Frechet distance in its features, per-class recall); null: no scores.
    `prompts` (a text file, one prompt a line, or a list) makes the inputs text-conditioned: prompts drawn
    uniformly, embedded by the run's text_encoder (once, then cached)."""

    classifier: str | None = "embedded:digits_classifier"
    grid_columns: int = 16
    prompts: str | list[str] | None = None


def read_prompts(prompts: str | list[str]) -> list[str]:
    if isinstance(prompts, list):
        found = [p for p in prompts if p.strip()]
    else:
        path = Path(prompts).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"modality.prompts: {path} does not exist")
        found = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not found:
        raise ValueError(f"modality.prompts: {prompts!r} holds no prompt")
    return found


def prompt_embeddings(options: ImageOptions, teacher: Denoiser, text_encoder) -> torch.Tensor | None:
    """[P, D] embeddings of the configured prompts, checked against the teacher's text conditioning."""
    if options.prompts is None:
        return None
    if text_encoder is None:
        raise ValueError("modality.prompts: prompts need a text encoder; set the run's text_encoder section")
    text_dim = getattr(getattr(teacher.backbone, "options", None), "text_dim", 0)
    if text_dim != text_encoder.dim:
        raise ValueError(f"modality.prompts: the teacher takes text embeddings of width {text_dim}, the text encoder "
                         f"makes {text_encoder.dim}")
    return text_encoder.encode(read_prompts(options.prompts))


def is_labels(cond) -> bool:
    return isinstance(cond, torch.Tensor) and not cond.is_floating_point()


class ImageModality(Modality):
    """Images [C, H, W] in [-1, 1]; class labels drawn uniformly when the teacher is class-conditional, or
    prompt embeddings when prompts are configured."""

    def __init__(self, options: ImageOptions, teacher: Denoiser, text_encoder=None) -> None:
        self.options = options
        self.sample_shape = teacher.sample_shape
        self.num_classes = teacher.num_classes
        self.prompts = prompt_embeddings(options, teacher, text_encoder)
        self.classifier = load_classifier(options.classifier) if options.classifier else None
        self._reference = None

    def draw_inputs(self, n, generator=None):
        noise = torch.randn(n, *self.sample_shape, generator=generator)
        if self.prompts is not None:
            return noise, self.prompts[torch.randint(len(self.prompts), (n,), generator=generator)]
        cond = torch.randint(self.num_classes, (n,), generator=generator) if self.num_classes else None
        return noise, cond

    sample_formats = (".png",)

    def save_samples(self, samples, cond, path: Path) -> Path:
        path = path.with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        if is_labels(cond):
            samples = samples[torch.argsort(cond, stable=True)]
        save_image((samples.clamp(-1, 1) + 1) / 2, path, nrow=self.options.grid_columns, padding=1)
        return path

    def reference_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._reference is None:
            images, _ = load_digits_tensors()
            with torch.no_grad():
                self._reference = gaussian_stats(self.classifier(images)[1])
        return self._reference

    def evaluate(self, samples, cond) -> dict[str, float]:
        if self.classifier is None:
            return {}
        with torch.no_grad():
            logits, features = self.classifier(samples.float().clamp(-1, 1))
        mu, cov = gaussian_stats(features)
        metrics = {"fdd": frechet_distance(mu, cov, *self.reference_stats())}
        if is_labels(cond):
            predicted = logits.argmax(1)
            recalls = [float((predicted[cond == c] == c).float().mean()) for c in range(self.num_classes)
                       if (cond == c).any()]
            metrics |= {"class_recall_mean": sum(recalls) / len(recalls), "class_recall_min": min(recalls)}
        return metrics

    def headline_metric(self) -> str:
        return "fdd"


MODALITIES.register("image", ImageOptions)(
    lambda options, context: ImageModality(options, context.teacher, context.text_encoder))
