"""`potstill train-teacher`: a registered backbone trained from scratch with the schedule's own denoising score
matching loss on a registered dataset (AdamW, warmup and decay, gradient clipping, EMA), checkpointed and
resumed exactly like a distillation run, and written as `DIR/teacher.safetensors` for `teacher.kind: trained`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from potstill.core import checkpoint as ckpt
from potstill.core import registry as reg
from potstill.core.codec import build_codec, encoded_real_data
from potstill.core.config import TrainConfig, read_yaml, to_dict
from potstill.core.config_changes import check_resume_changes, record_changes, with_defaults, write_config_file
from potstill.core.denoiser import Denoiser, drop_conditions
from potstill.core.distiller import rng_state, seed_everything, set_rng_state
from potstill.core.ema import EMA
from potstill.core.engine import Engine, NonFiniteError, Part, PlainEngine, PlainOptions
from potstill.core.step_loop import StepLoop, refuse_nonfinite
from potstill.core.teacher_config import TeacherRunConfig, load_teacher_config
from potstill.core.teacher_file import TEACHER_FILE, write_teacher_file
from potstill.core.tensors import to_device

FREE_HERE = ["train.device"]     # besides config_changes.FREE_ON_RESUME: where it runs is no part of the recipe


@dataclass
class DataContext:
    """What a dataset builder may read: this config, the engine and the text encoder (when the config has one); no
    teacher or modality."""

    config: TeacherRunConfig
    engine: Engine
    teacher: None = None
    modality: None = None
    text_encoder: nn.Module | None = None


def options_dict(options) -> dict:
    """A component's options as a plain mapping (empty for a component without options)."""
    return to_dict(options) if options is not None else {}


def sized_to_data(options, real_data, text_encoder: nn.Module | None = None):
    """The backbone's options with a null `input_size` set to the data's frame or image side, a null `in_channels`
    to its channels (both read from one sample, drawn before any state is saved or loaded), a null
    `num_classes` to the data's class count and a null `text_dim` to the text encoder's width, so
    `--set real_data.canvas=16`, new tone classes or another text tower need nothing else."""
    unset = [key for key in ("input_size", "in_channels", "num_classes", "text_dim")
             if hasattr(options, key) and getattr(options, key) is None]
    if not unset:
        return options
    sizes = {}
    if "text_dim" in unset:
        if text_encoder is None:
            raise ValueError("backbone.text_dim: null takes the width of the run's text encoder, and this config "
                             "has no text_encoder section; set one, or set text_dim")
        sizes["text_dim"] = int(text_encoder.dim)
    if "num_classes" in unset:
        sizes["num_classes"] = getattr(real_data, "num_classes", None)
        if sizes["num_classes"] is None:
            raise ValueError("backbone.num_classes: null takes the class count from the data, and this real_data "
                             "source does not give one; set it")
    if {"input_size", "in_channels"} & set(unset):
        sample, _ = real_data.next(1)
        sizes |= {key: int(sample.shape[index]) for key, index in (("input_size", -1), ("in_channels", 1))
                  if key in unset}
    return replace(options, **sizes)


class TeacherTrainer(StepLoop):
    """One teacher run: backbone, schedule and data (encoded by the codec, when one is set) built from `config`,
    trained by `train()`, checkpointed under `run_dir/checkpoints` (backbone and EMA as safetensors; optimizer,
    RNG, data stream and step in state.pt)."""

    loop_name = "train-teacher"

    def __init__(self, config: TeacherRunConfig, run_dir: Path) -> None:
        self.config, self.run_dir = config, Path(run_dir)
        t = config.train
        seed_everything(t.seed)
        self.engine = PlainEngine(PlainOptions(t.device), TrainConfig(steps=t.steps, batch_size=t.batch_size,
                                                                      seed=t.seed))
        dataset = reg.DATASETS.get(config.real_data.kind, "real_data.kind")
        context = DataContext(config, self.engine)
        if config.text_encoder is not None:
            encoder = reg.TEXT_ENCODERS.get(config.text_encoder.kind, "text_encoder.kind")
            context.text_encoder = encoder.builder(config.text_encoder.options, context)
        self.real_data = dataset.builder(config.real_data.options, context)
        self.codec = build_codec(config.codec, context)
        if self.codec is not None:
            self.real_data = encoded_real_data(self.real_data, self.codec.to(self.engine.device))
        self.backbone_options = sized_to_data(config.backbone.options, self.real_data, context.text_encoder)
        backbone = reg.BACKBONES.get(config.backbone.kind, "backbone.kind").builder(self.backbone_options)
        schedule = reg.SCHEDULES.get(config.schedule.kind, "schedule.kind").builder(config.schedule.options)
        self.num_classes = int(getattr(self.backbone_options, "num_classes", 0) or 0)
        self._check_label_dropout()
        self.model = Denoiser(backbone, schedule, config.prediction, config.sigma_data, (), self.num_classes)
        self.model.to(self.engine.device)
        self.ema = EMA(self.model, t.ema_decay, std=t.ema_std)
        self.trainable = self.engine.prepare("backbone", [Part("backbone", self.model, t.optim())])
        self.step = 0

    def _check_label_dropout(self) -> None:
        options = self.config.backbone.options
        if self.config.label_dropout > 0 and getattr(options, "class_dropout_prob", None) == 0 and self.num_classes:
            raise ValueError("label_dropout: the backbone has no null class to drop labels to "
                             "(backbone.class_dropout_prob is 0); make it > 0 or set label_dropout: 0")

    def _set_sample_shape(self, shape) -> None:
        self.model.sample_shape = self.ema.model.sample_shape = tuple(int(s) for s in shape)

    def drop_labels(self, cond):
        """Each sample's condition replaced by the backbone's null condition with probability `label_dropout`."""
        return drop_conditions(self.model, cond, self.config.label_dropout, "label_dropout")

    def train_step(self) -> dict[str, float]:
        """One AdamW step on a batch of real samples; the loss is the schedule's native DSM loss."""
        t = self.config.train
        x0, cond = to_device(self.real_data.next(t.batch_size), self.engine.device)
        if not self.model.sample_shape:
            self._set_sample_shape(x0.shape[1:])
        cond = self.drop_labels(cond)
        lr = t.lr_at(self.step)
        for group in self.engine.optimizer_groups(self.trainable):
            group["lr"] = lr
        self.engine.step_index = self.step + 1
        loss = self.model.dsm_loss(x0, cond).mean()
        self.engine.backward(self.trainable, loss, "teacher")
        norms = self.engine.step(self.trainable)
        self.ema.update(self.model, self.step + 1)
        self.step += 1
        return {"loss": loss.item(), "lr": lr, "grad_norm": norms["backbone"]}

    def loop_metrics(self, window: dict[str, float]) -> dict[str, float]:
        return window | self.real_data.metrics()

    def save(self) -> Path:
        """A verified checkpoint of this step (kept when one is already in place); never of a non-finite model."""
        folder = self.run_dir / "checkpoints"
        final = ckpt.final_folder(folder, self.step)
        if ckpt.checkpoint_problem(final) is None:
            return final
        weights = {"backbone": self.engine.full_state_dict(self.model.backbone),
                   "backbone_ema": self.engine.full_state_dict(self.ema.model.backbone)}
        refuse_nonfinite(weights, self.step, self.engine)
        state = {"step": self.step, "optimizers": self.engine.save_training_state(folder, [self.trainable]),
                 "rng": rng_state(), "real_data": self.real_data.state_dict(),
                 "sample_shape": list(self.model.sample_shape)}
        return ckpt.save_checkpoint(folder, self.step, weights, state, self.config.train.keep_checkpoints)

    def load(self, checkpoint: Path) -> None:
        """Weights, optimizer, RNG, data stream and step from a (verified) checkpoint."""
        self.model.backbone.load_state_dict(ckpt.load_weights(checkpoint, "backbone"))
        self.ema.model.backbone.load_state_dict(ckpt.load_weights(checkpoint, "backbone_ema"))
        state = ckpt.load_state(checkpoint)
        self.step = state["step"]
        self.engine.load_training_state(checkpoint, [self.trainable], state["optimizers"])
        set_rng_state(state["rng"])
        self.real_data.load_state_dict(state["real_data"])
        self._set_sample_shape(state["sample_shape"])

    def resume(self) -> bool:
        """Continue from the newest intact checkpoint; False when there is none."""
        latest = ckpt.latest_checkpoint(self.run_dir / "checkpoints")
        if latest is None:
            return False
        self.load(latest)
        return True

    def metadata(self) -> dict:
        """The teacher file's `potstill` metadata: everything `teacher.kind: trained` rebuilds the Denoiser from."""
        c = self.config
        return {"backbone": c.backbone.kind, "backbone_options": options_dict(self.backbone_options),
                "schedule": c.schedule.kind, "schedule_options": options_dict(c.schedule.options),
                "prediction": c.prediction, "sigma_data": c.sigma_data, "sample_shape": list(self.model.sample_shape),
                "num_classes": self.num_classes, "data": to_dict(c.real_data), "codec": to_dict(c.codec),
                "text_encoder": to_dict(c.text_encoder), "trained_steps": self.step}

    def write_teacher(self) -> Path:
        """`run_dir/teacher.safetensors`: the EMA backbone with the metadata, written atomically."""
        state = self.engine.full_state_dict(self.ema.model.backbone)
        return write_teacher_file(self.run_dir / TEACHER_FILE, state, self.metadata())


def train_teacher(config: TeacherRunConfig, run_dir: Path, resume: bool = False,
                  allow_change: list[str] | None = None) -> Path:
    """Train to `train.steps` (continuing the run in `run_dir` with `resume`), checkpoint, and write the teacher
    file; returns its path. A resume whose config differs is refused unless each change is free or allowed."""
    run_dir = Path(run_dir)
    folder, saved = run_dir / "checkpoints", run_dir / "config.yaml"
    if not resume and (ckpt.holds_checkpoints(folder) or (run_dir / TEACHER_FILE).exists()):
        raise FileExistsError(f"{run_dir}: already holds a teacher run; pass --resume to continue it, or another "
                              "--out")
    if resume and not ckpt.holds_checkpoints(folder):
        raise FileNotFoundError(f"{run_dir}: --resume given but the run has no checkpoint")
    requested = to_dict(config)
    changes = (check_resume_changes(with_defaults(read_yaml(saved), lambda data: load_teacher_config(data=data)),
                                    requested, [*FREE_HERE, *(allow_change or [])])
               if resume and saved.is_file() else {})
    trainer = TeacherTrainer(config, run_dir)
    if resume:
        trainer.resume()
    if changes:
        record_changes(run_dir, trainer.step, changes, requested)
    elif not resume or not saved.is_file():
        write_config_file(saved, requested)
    action = f"resuming at step {trainer.step}" if trainer.step else "starting"
    print(f"potstill train-teacher: {action}; run directory: {run_dir}; seed {config.train.seed}; "
          f"TensorBoard: tensorboard --logdir {run_dir / 'logs' / 'tb'}", flush=True)
    try:
        trainer.train()
        trainer.save()
    except NonFiniteError as error:
        latest = ckpt.latest_checkpoint(folder) if ckpt.holds_checkpoints(folder) else None
        where = f"last good checkpoint: {latest} (continue with --resume)" if latest else "no checkpoint yet"
        raise NonFiniteError(f"{error}; {where}") from None
    return trainer.write_teacher()
