"""The distillation loop: builds modality, teacher, student, fake score, objective, adversary and real
data from one config through the registries, then alternates critic and generator updates (TTUR),
keeps an EMA of the generator, logs, samples and writes resumable checkpoints."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from potstill.core import checkpoint as ckpt
from potstill.core import parallel
from potstill.core import registry as reg
from potstill.core.codec import Codec, EncodedModality, build_codec, encoded_real_data
from potstill.core.config import RunConfig, to_dict
from potstill.core.config_changes import write_config_file
from potstill.core.denoiser import Denoiser
from potstill.core.ema import EMA
from potstill.core.engine import DTYPES, Engine, NonFiniteError, Part, Trainable
from potstill.core.evaluation import evaluate_generator, evaluate_teacher
from potstill.core.generator import Generator
from potstill.core.lora import shared_keys
from potstill.core.modality import Modality
from potstill.core.run_log import append_record, drop_records_after
from potstill.core.samplers import default_solver
from potstill.core.step_loop import RunningMean, StepLoop, refuse_nonfinite
from potstill.core.tensors import to_device


@dataclass
class BuildContext:
    """What a component's builder may read: the config and the components built before it."""

    config: RunConfig
    engine: Engine
    teacher: Denoiser | None = None
    modality: Modality | None = None
    generator: Generator | None = None
    fake_score: nn.Module | None = None
    text_encoder: nn.Module | None = None
    codec: Codec | None = None

    @property
    def data_shape(self) -> tuple[int, ...]:
        """The shape of one datum the modality saves and scores: the teacher's sample shape, decoded when a codec
        sits between them."""
        shape = tuple(self.teacher.sample_shape)
        return self.codec.data_shape(shape) if self.codec is not None else shape


def _build(registry: reg.Registry, component, context: BuildContext, key: str):
    entry = registry.get(component.kind, key)
    return entry.builder(component.options, context)


def build_frozen_parts(context: BuildContext) -> None:
    """The text encoder, teacher and codec the rest of a run is built on, into `context` (a teacher may bring its
    own text encoder and codec: a diffusers pipeline folder's)."""
    config = context.config
    context.text_encoder = (_build(reg.TEXT_ENCODERS, config.text_encoder, context, "text_encoder.kind")
                            if config.text_encoder is not None else None)
    with torch.random.fork_rng():       # built whole or partitioned (no random init there), the run draws the same
        context.teacher = _build(reg.TEACHERS, config.teacher, context, "teacher.kind").requires_grad_(False).eval()
    context.codec = build_codec(config.codec, context, context.teacher)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every generator's state as tensors and plain values, so `state.pt` loads with `weights_only=True`."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def has_parameters(module: nn.Module | None) -> bool:
    return module is not None and any(p.requires_grad for p in module.parameters())


EVALS_LOG = "evals.jsonl"
GRAD_NORM_KEYS = {"generator": "g_grad_norm", "fake_score": "fake_grad_norm", "discriminator": "d_grad_norm",
                  "critic": "critic_grad_norm"}


def enable_activation_checkpointing(modules: list[nn.Module]) -> None:
    """Recompute the blocks of every backbone that offers it (`activation_checkpointing`) in backward."""
    found = [sub for module in modules for sub in module.modules() if hasattr(sub, "activation_checkpointing")]
    if not found:
        raise ValueError("train.activation_checkpointing: none of the trained models has blocks to checkpoint "
                         "(the DiT backbone has)")
    for sub in found:
        sub.activation_checkpointing = True


class Distiller(StepLoop):
    """One run: components built from `config`, trained by `train()`, checkpointed under `run_dir`. With
    `with_real_data=False` (sampling and evaluating a finished run) the real-data stream is not opened."""

    loop_name = "distill"

    def __init__(self, config: RunConfig, run_dir: Path | None = None, with_real_data: bool = True) -> None:
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        seed_everything(config.train.seed)
        engine_entry = reg.ENGINES.get(config.engine.kind, "engine.kind")
        self.engine: Engine = engine_entry.builder(config.engine.options, config.train)
        self.micro_batch = self.engine.micro_batch
        context = BuildContext(config, self.engine)
        build_frozen_parts(context)
        self.text_encoder, self.teacher = context.text_encoder, context.teacher
        self.codec = context.codec.to(self.engine.device) if context.codec is not None else None
        context.modality = _build(reg.MODALITIES, config.modality, context, "modality.kind")
        if self.codec is not None:
            context.modality = EncodedModality(context.modality, self.codec)
        self.modality = context.modality
        context.generator = _build(reg.GENERATORS, config.generator, context, "generator.kind")
        self.generator = context.generator
        context.fake_score = (_build(reg.FAKE_SCORES, config.fake_score, context, "fake_score.kind")
                              if config.fake_score is not None else None)
        self.fake_score = context.fake_score
        self.objective = _build(reg.OBJECTIVES, config.objective, context, "objective.kind")
        self.objective.use_noise_source(self.modality.noise_source(self.generator))
        self.adversary = self._build_adversary(context)
        self.real_data = (_build(reg.DATASETS, config.real_data, context, "real_data.kind")
                          if config.real_data is not None and with_real_data else None)
        if self.real_data is not None and self.codec is not None:
            self.real_data = encoded_real_data(self.real_data, self.codec)
        self._check_requirements(with_real_data)
        for module in (self.generator, self.fake_score, self.adversary, self.objective):
            if module is not None:
                module.to(self.engine.device)
        ema_dtype = DTYPES[config.train.ema_dtype]
        self.ema = EMA(self.generator, config.train.ema_decay, shared=self.teacher,
                       copy_model=lambda model, memo: self.engine.copy_model(model, self.engine.partitions_trained(),
                                                                             ema_dtype, memo), std=config.train.ema_std)
        if config.train.activation_checkpointing:
            enable_activation_checkpointing([m for m in (self.generator, self.fake_score) if has_parameters(m)])
        self._prepare_training()
        train = config.train
        self.teacher = self.engine.prepare_frozen("teacher", self.teacher, config.teacher.shard,
                                                  DTYPES[train.teacher_dtype])
        self.ema.model = self.engine.prepare_frozen("generator_ema", self.ema.model, self.engine.partitions_trained(),
                                                    ema_dtype)
        self.step = 0
        self.last_generator_step: int | None = None

    def _build_adversary(self, context: BuildContext) -> nn.Module | None:
        """The configured adversary, or the objective's own when it is adversarial (ADD, LADD, APT)."""
        component = self.config.adversary
        if component is None and self.objective.default_adversary is not None:
            entry = reg.ADVERSARIES.get(self.objective.default_adversary, "adversary.kind")
            return entry.builder(entry.options(), context)
        return _build(reg.ADVERSARIES, component, context, "adversary.kind") if component is not None else None

    def _check_requirements(self, with_real_data: bool) -> None:
        kind = self.config.objective.kind
        if self.objective.uses_fake_score and self.fake_score is None:
            raise ValueError(f"fake_score: objective {kind!r} trains a fake score; set fake_score.kind")
        if self.objective.needs_adversary and not hasattr(self.adversary, "logits_at"):
            raise ValueError(f"adversary: objective {kind!r} reads a feature discriminator's logits at noisy t; "
                             "set adversary.kind to feature_gan, ladd or apt")
        if self.objective.requires_gan_term and self.adversary.options.generator_weight <= 0:
            raise ValueError(f"adversary.generator_weight: objective {kind!r} needs its GAN term; make it > 0")
        if self.adversary is not None and not self.objective.samples_generator:
            raise ValueError(f"adversary: objective {kind!r} feeds the generator its own inputs and draws no samples "
                             "for a discriminator; remove the adversary section")
        if getattr(self.adversary, "pairs_real", False) and not self.generator.trains_on_real:
            raise ValueError("adversary: this adversary pairs each generated sample with the real sample its "
                             "generator input was made from (ARC); set generator.inputs: real")
        if self.generator.trains_on_real and with_real_data and self.real_data is None:
            raise ValueError("real_data: the generator trains on real samples (generator.inputs: real); set "
                             "real_data.kind")
        wants_real = self.adversary is not None or self.objective.needs_real_data
        if wants_real and with_real_data and self.real_data is None:
            raise ValueError(f"real_data: the adversary or objective {kind!r} needs real samples; set real_data.kind")

    def _prepare_training(self) -> None:
        """Two optimizer steps: the generator's, and the critic's (fake score and discriminator together)."""
        o = self.config.optim
        self.g_train = self.engine.prepare("generator", [Part("generator", self.generator, o.generator)])
        shared = self.adversary is not None and self.adversary.trains_fake_score
        critic = []
        if has_parameters(self.fake_score) and (self.objective.uses_fake_score or shared):
            critic.append(Part("fake_score", self.fake_score, o.fake_score))
        if self.adversary is not None:
            critic.append(Part("discriminator", self.adversary, o.discriminator))
            if not self.engine.steps_parts_alone:
                self._check_discriminator_every()
        self.critic_train = self.engine.prepare("critic", critic) if critic else None
        self.trains_fake = any(p.name == "fake_score" for p in critic)

    def _check_discriminator_every(self) -> None:
        if self.config.train.discriminator_every != 1:
            raise ValueError("train.discriminator_every: under DeepSpeed the discriminator steps with the fake "
                             "score in one engine; set it to 1")

    @property
    def trainables(self) -> list[Trainable]:
        return [t for t in (self.g_train, self.critic_train) if t is not None]

    def draw_inputs(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, object]:
        """Generator inputs from the modality, on the engine's device (the same for every rank)."""
        noise, cond = self.modality.draw_inputs(n, generator)
        return noise.to(self.engine.device), to_device(cond, self.engine.device)

    def draw_local_inputs(self, n: int) -> tuple[torch.Tensor, object]:
        """This rank's rows of a global draw of training inputs."""
        return parallel.draw_local(self.draw_inputs, n)

    def training_inputs(self, n: int) -> tuple[torch.Tensor, object]:
        """This rank's generator inputs for a training step: noise and conditions, or real samples and theirs
        for a generator that trains on real data (CausVid's noised real clips)."""
        return self.next_real(n) if self.generator.trains_on_real else self.draw_local_inputs(n)

    def paired_real(self, inputs: torch.Tensor, cond) -> tuple[torch.Tensor, object] | None:
        """The real samples (and conditions) a generator that trains on real data was fed, row for row with its
        output, so critics and adversaries compare each generated sample with its own source; None otherwise."""
        return (inputs, cond) if self.generator.trains_on_real else None

    def next_real(self, n: int):
        """This rank's rows of the next global batch of real samples, on the device (a stream that splits its
        data by rank reads this rank's rows itself)."""
        if self.real_data.splits_by_rank:
            return to_device(self.real_data.next(n), self.engine.device)
        return to_device(parallel.draw_local(self.real_data.next, n), self.engine.device)

    def data_metrics(self) -> dict[str, float]:
        """The real-data stream's counters, summed over ranks."""
        return self.engine.sum_metrics(self.real_data.metrics()) if self.real_data is not None else {}

    def _grad_norms(self, trainable: Trainable) -> dict[str, float]:
        """Step `trainable` at each part's scheduled learning rate; the gradient norms."""
        for group, part in zip(self.engine.optimizer_groups(trainable), trainable.parts, strict=True):
            group["lr"] = part.optim.lr_at(self.step, self.config.train.steps)
        return {GRAD_NORM_KEYS[name]: norm for name, norm in self.engine.step(trainable).items()}

    def critic_update(self, step: int) -> dict[str, float]:
        """Fake score (denoising score matching) and discriminator on detached generator samples."""
        use_d = self.adversary is not None and step % self.config.train.discriminator_every == 0
        train_fake = self.trains_fake and self.objective.uses_fake_score
        if not train_fake and not use_d:
            return {}
        metrics = RunningMean()
        for _ in range(self.config.train.grad_accum):
            metrics.add(self._critic_micro_batch(train_fake, use_d))
        return metrics.mean() | self._grad_norms(self.critic_train)

    def _critic_micro_batch(self, train_fake: bool, use_d: bool) -> dict[str, float]:
        with torch.no_grad(), self.engine.autocast():
            noise, cond = self.training_inputs(self.micro_batch)
            x = self.objective.critic_samples(self.generator, noise, cond).float()
        if self.engine.max_over_ranks(int(not torch.isfinite(x).all())):
            raise NonFiniteError(f"generator: its samples are not finite at step {self.step}, before the critic "
                                 f"saw them; the generator's last update (step {self.last_generator_step}) diverged")
        metrics: dict[str, float] = {}
        loss = torch.zeros((), device=self.engine.device)
        needs_real = use_d or (train_fake and self.objective.needs_real_data)
        real = self.paired_real(noise, cond) or (self.next_real(self.micro_batch) if needs_real else None)
        with self.engine.autocast():
            if train_fake:
                fake_loss, m = self.objective.fake_score_loss(x, cond, self.fake_score, real)
                loss = loss + fake_loss
                metrics |= m
            if use_d:
                d_loss, m = self.adversary.discriminator_loss(real[0], real[1], x, cond)
                loss = loss + self.adversary.options.discriminator_weight * d_loss
                metrics |= m
        self.engine.backward(self.critic_train, loss, "fake score / discriminator")
        return metrics

    def generator_update(self) -> dict[str, float]:
        """The objective's surrogate loss plus the weighted adversarial term; critic frozen meanwhile."""
        frozen = [p for m in (self.fake_score, self.adversary) if m is not None for p in m.parameters()
                  if p.requires_grad]
        for parameter in frozen:
            parameter.requires_grad_(False)
        try:
            metrics = RunningMean()
            for _ in range(self.config.train.grad_accum):
                metrics.add(self._generator_micro_batch())
            result = metrics.mean() | self._grad_norms(self.g_train)
        finally:
            for parameter in frozen:
                parameter.requires_grad_(True)
        self.ema.update(self.generator, self.step // self.config.train.generator_every + 1)
        self.objective.after_generator_step(self.generator)
        self.last_generator_step = self.step
        return result

    def _generator_micro_batch(self) -> dict[str, float]:
        with self.engine.autocast():
            noise, cond = self.training_inputs(self.micro_batch)
            loss, metrics, x = self.objective.generator_step(self.generator, noise, cond, self.teacher,
                                                             self.fake_score, self.adversary)
            if self.adversary is not None and self.adversary.options.generator_weight:
                g_adv = self.adversary.generator_loss(x, cond, self.paired_real(noise, cond))
                loss = loss + self.adversary.options.generator_weight * g_adv
                metrics["g_adv"] = g_adv.item()
        self.engine.backward(self.g_train, loss, "generator")
        return metrics

    def train_step(self) -> dict[str, float]:
        """One iteration: critic update(s), then a generator update every `generator_every` steps. The
        generator's metrics come first, so the progress bar, which shows a log line's first losses, shows them."""
        train = self.config.train
        self.engine.step_index = self.step
        self.objective.progress = self.step / train.steps
        critic: dict[str, float] = {}
        for _ in range(train.fake_score_updates):
            critic |= self.critic_update(self.step)
        generator = self.generator_update() if self.step % train.generator_every == 0 else {}
        self.step += 1
        return generator | {k: v for k, v in critic.items() if k not in generator}

    def loop_metrics(self, window: dict[str, float]) -> dict[str, float]:
        return self.engine.reduce_metrics(window) | self.data_metrics()

    def after_step(self) -> None:
        train, every = self.config.train, self.config.eval.every
        if self.run_dir and train.sample_every and self.step % train.sample_every == 0:
            self.save_samples()
        if self.run_dir and every and self.step % every == 0:
            self.record_evaluation()

    def record_evaluation(self) -> dict:
        """The EMA student's metrics now (`eval.every_n_samples`, else `eval.n_samples`), appended to
        `logs/evals.jsonl` with the seconds spent training and the generator updates so far. Every rank samples
        (a sharded EMA gathers); the evaluation draws from its own seeded RNG, so training continues unchanged."""
        e = self.config.eval
        metrics = evaluate_generator(self.modality, self.ema.model, e.every_n_samples or e.n_samples, e.batch_size,
                                     self.engine.device)
        record = {"step": self.step, "train_seconds": self.train_seconds,
                  "generator_updates": math.ceil(self.step / self.config.train.generator_every),
                  **{k: v for k, v in metrics.items() if isinstance(v, int | float)}}
        if self.engine.is_main:
            append_record(self.run_dir / "logs" / EVALS_LOG, record)
        return record

    # ---- run directory ------------------------------------------------------------------------

    def write_config(self) -> None:
        write_config_file(self.run_dir / "config.yaml", to_dict(self.config))

    def _saved_modules(self) -> list[tuple[str, nn.Module]]:
        """The models a checkpoint holds as safetensors, by file name."""
        modules = [("generator", self.generator), ("generator_ema", self.ema.model)]
        if has_parameters(self.fake_score):
            modules.append(("fake_score", self.fake_score))
        if self.adversary is not None:
            modules.append(("discriminator", self.adversary))
        if self.objective.state_dict():
            modules.append(("objective", self.objective))
        return modules

    def own_weights(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """A model's weights less the tensors it shares with the teacher (a LoRA copy's base), which come back
        from the teacher when the run is opened."""
        shared = shared_keys(module, self.teacher)
        return {k: v for k, v in self.engine.full_state_dict(module).items() if k not in shared}

    def with_teacher_weights(self, module: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Saved weights completed by the tensors the model shares with the teacher."""
        shared = shared_keys(module, self.teacher)
        return {k: v for k, v in module.state_dict().items() if k in shared} | weights

    def save(self) -> Path:
        """Write a checkpoint atomically; under DeepSpeed every rank takes part and the main rank commits it. A
        step already saved intact is not written again; a model with a NaN or infinity is never saved."""
        folder = self.run_dir / "checkpoints"
        final = ckpt.final_folder(folder, self.step)
        if self.engine.broadcast(self.engine.is_main and ckpt.checkpoint_problem(final) is None):
            return final
        weights = {name: self.own_weights(module) for name, module in self._saved_modules()}
        refuse_nonfinite(weights, self.step, self.engine)
        staging = ckpt.staging_folder(folder, self.step)
        if self.engine.is_main:
            ckpt.clear_folder(staging)
        self.engine.barrier()
        optimizers = self.engine.save_training_state(staging, self.trainables)
        real_states = self.engine.gather(self.real_data.state_dict()) if self.real_data is not None else None
        self.engine.barrier()
        if self.engine.is_main:
            state = {"step": self.step, "optimizers": optimizers, "rng": rng_state(), "real_data": real_states,
                     "train_seconds": self.train_seconds}
            ckpt.write_checkpoint(staging, weights, state)
            ckpt.write_manifest(staging, self.step)
            ckpt.commit_checkpoint(folder, staging, final, self.config.train.keep_checkpoints)
        self.engine.barrier()
        return final

    def load(self, checkpoint: Path, training_state: bool = True, verified: bool = False) -> None:
        """Load weights (and, for resuming, optimizer, RNG, data and step state) from a checkpoint, after
        checking its files against the manifest (weights only, when not resuming; not again when `verified`)."""
        if not verified:
            ckpt.verify_checkpoint(checkpoint, None if training_state else ckpt.is_weights_file)
        for name, module in self._saved_modules():
            self.engine.load_full_state_dict(module, self.with_teacher_weights(module, ckpt.load_weights(checkpoint,
                                                                                                       name)))
        if not training_state:
            self.step = ckpt.checkpoint_step(checkpoint)
            return
        state = ckpt.load_state(checkpoint)
        self.step = state["step"]
        self.train_seconds = state.get("train_seconds", 0.0)      # absent from checkpoints before it was kept
        if self.run_dir and self.engine.is_main:
            drop_records_after(self.run_dir / "logs" / EVALS_LOG, self.step)
        self.engine.load_training_state(checkpoint, self.trainables, state["optimizers"])
        set_rng_state(state["rng"])
        if self.real_data is not None:
            self.real_data.load_state_dict(self._own_stream_state(state["real_data"]))

    def _own_stream_state(self, states: list[dict]) -> dict:
        """This rank's saved stream state; a stream split by rank needs the world size it was saved with."""
        if not self.real_data.splits_by_rank:
            return states[0]
        if len(states) != self.engine.world_size:
            raise ValueError(f"real_data: the checkpoint holds the streams of {len(states)} ranks, this run has "
                             f"{self.engine.world_size}; each rank reads its own shards, so resume on "
                             f"{len(states)} ranks")
        return states[self.engine.rank]

    def resume(self) -> bool:
        """Continue from the run directory's latest intact checkpoint; False when there is none."""
        latest = ckpt.latest_checkpoint(self.run_dir / "checkpoints")
        if latest is None:
            return False
        self.load(latest, verified=True)
        return True

    def fixed_inputs(self, n: int) -> tuple[torch.Tensor, object]:
        return self.draw_inputs(n, torch.Generator().manual_seed(self.config.train.seed + 12345))

    @torch.no_grad()
    def save_samples(self, n: int = 64) -> Path:
        """A grid from the EMA student on fixed inputs; every rank samples (a sharded EMA gathers), the main
        rank writes."""
        with torch.random.fork_rng(devices=[]):
            noise, cond = self.fixed_inputs(n)
            x = self.ema.model.sample(noise, cond)
        path = self.run_dir / "samples" / f"step_{self.step:08d}"
        if self.engine.is_main:
            path = self.modality.save_samples(x.cpu(), to_device(cond, "cpu"), path)
        return path

    def evaluate(self) -> dict:
        """Metrics of the EMA student (and of the teacher at each `eval.teacher_nfe`) on the evaluation budget,
        merged into `report.json` by the main rank: sections written by others (the real-data record, the demo's
        table) are kept."""
        e = self.config.eval
        device = self.engine.device
        report = {"step": self.step, "n_samples": e.n_samples,
                  "student": evaluate_generator(self.modality, self.ema.model, e.n_samples, e.batch_size, device)}
        if e.teacher_nfe:
            report["teacher"] = [evaluate_teacher(self.modality, self.teacher, nfe, e.n_samples, e.batch_size, device)
                                 | {"solver": default_solver(nfe)} for nfe in e.teacher_nfe]
        for name, model in (("teacher", self.teacher), ("text_encoder", self.text_encoder)):
            if model is not None:
                local, total = self.engine.parameter_share(model)
                report[f"{name}_parameters"] = {"ranks": self.engine.world_size, "main_rank_holds": local,
                                                "total": total}
        data_report = self.real_data.report() if self.real_data is not None else {}
        if data_report:
            report["real_data"] = data_report
        if self.run_dir and self.engine.is_main:
            path = self.run_dir / "report.json"
            kept = json.loads(path.read_text()) if path.is_file() else {}
            ckpt.write_text_atomic(path, json.dumps(kept | report, indent=2))
        return report
