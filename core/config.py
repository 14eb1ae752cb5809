"""Typed run configs from YAML: `extends:` inheritance, `--set key=value` overrides, and validation
whose errors name the bad key and list what it may be."""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, Union

import yaml

from potstill.core import registry as reg
from potstill.core.lr_schedule import Decay, scheduled_lr


class ConfigError(ValueError):
    """A config that cannot be loaded; the message starts with the offending key."""


@dataclass
class Component:
    """A registered component chosen by `kind`, with its options loaded into the entry's dataclass."""

    kind: str
    options: Any = None
    shard: bool = False


@dataclass
class OptimConfig:
    """AdamW settings for one trained model; `lr` is the peak of a linear warmup over `warmup_steps` and a `decay`
    to `final_lr_fraction` of it by the run's last step, from the share `decay_start` of the run on
    (core/lr_schedule.py; constant by default)."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    eps: float = 1e-8
    grad_clip: float | None = 10.0
    warmup_steps: int = 0
    decay: Decay = "none"
    final_lr_fraction: float = 0.1
    decay_start: float = 0.0

    def lr_at(self, step: int, steps: int) -> float:
        """The learning rate of 0-based step `step` of `steps`."""
        return scheduled_lr(self.lr, step, steps, self.warmup_steps, self.decay, self.final_lr_fraction,
                            self.decay_start)


@dataclass
class OptimGroup:
    """One optimizer per trained model: separate learning rates are the point of TTUR."""

    generator: OptimConfig = field(default_factory=OptimConfig)
    fake_score: OptimConfig = field(default_factory=OptimConfig)
    discriminator: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class TrainConfig:
    """The alternating loop: `generator_every` steps per generator update, critic updates every step.
    `batch_size` is the global batch of one optimizer step, split over ranks and `grad_accum` micro-batches.
    `sample_every` / `checkpoint_every` 0: only the grid and checkpoint written at the end of the run.
    `precision`: fp32; bf16_autocast (fp32 weights, matrix products in bfloat16); bf16 (DeepSpeed: bfloat16
    parameters and gradients, fp32 master weights and Adam moments in the optimizer partitions).
    `teacher_dtype` / `ema_dtype`: what the frozen teacher and the student's EMA are held in.
    `ema_std`: EDM2's power-function EMA, whose averaging window is this share of the generator updates so far (its
    profile's relative standard deviation; EDM2 finds 0.05-0.15 best), in place of the constant `ema_decay`.
    `memory_per_rank_gib`: what one rank may give the teacher's parameters (null: what is free on its device); a
    teacher whose share is larger stops the run before it is read."""

    steps: int = 1000
    batch_size: int = 64
    grad_accum: int = 1
    activation_checkpointing: bool = False
    generator_every: int = 1
    fake_score_updates: int = 1
    discriminator_every: int = 1
    seed: int = 0
    ema_decay: float = 0.999
    ema_std: float | None = None
    precision: Literal["fp32", "bf16", "bf16_autocast"] = "fp32"
    teacher_dtype: Literal["fp32", "bf16"] = "fp32"
    ema_dtype: Literal["fp32", "bf16"] = "fp32"
    memory_per_rank_gib: float | None = None
    log_every: int = 10
    sample_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    progress: bool = True


@dataclass
class EvalConfig:
    """What `potstill eval` and the end of a run measure; with `every`, the EMA student is also scored every that
    many steps on `every_n_samples` (0: `n_samples`) into `logs/evals.jsonl`, with the seconds spent training and
    the generator updates so far: quality against time (benchmarks/quality_vs_time.py)."""

    n_samples: int = 2000
    batch_size: int = 500
    teacher_nfe: list[int] = field(default_factory=list)
    every: int = 0
    every_n_samples: int = 0


@dataclass
class RunConfig:
    """Everything a distillation run is built from."""

    modality: Component
    teacher: Component
    generator: Component
    objective: Component
    fake_score: Component | None = None
    adversary: Component | None = None
    real_data: Component | None = None
    engine: Component | None = None
    text_encoder: Component | None = None
    codec: Component | None = None      # null: the teacher file's own codec, if it was trained through one
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimGroup = field(default_factory=OptimGroup)
    eval: EvalConfig = field(default_factory=EvalConfig)
    plugins: list[str] = field(default_factory=list)   # modules or .py files imported first (core/plugins.py)


class Rule(NamedTuple):
    """A condition a loaded setting must meet, worded for its error: `KEY: must be WANTS, got VALUE`."""

    holds: Callable[[Any], bool]
    wants: str


AT_LEAST_1 = Rule(lambda v: v >= 1, "at least 1")
AT_LEAST_0 = Rule(lambda v: v >= 0, "at least 0")
POSITIVE = Rule(lambda v: v > 0, "greater than 0")
FRACTION = Rule(lambda v: 0 <= v < 1, "in [0, 1)")
LONGEST_EMA_STD = 12 ** -0.5    # the power EMA's profile at gamma = 0: a plain average of every update
EMA_STD = Rule(lambda v: 0 < v < LONGEST_EMA_STD,
               f"in (0, {LONGEST_EMA_STD:.4f}) (12^-1/2, the profile of a plain average)")

RULES: dict[type, dict[str, Rule]] = {
    TrainConfig: {
        **dict.fromkeys(["steps", "batch_size", "grad_accum", "generator_every", "fake_score_updates",
                         "discriminator_every", "log_every", "keep_checkpoints"], AT_LEAST_1),
        "checkpoint_every": AT_LEAST_0, "sample_every": AT_LEAST_0, "ema_decay": FRACTION,
        "ema_std": EMA_STD,
    },
    OptimConfig: {
        "lr": POSITIVE, "eps": POSITIVE, "weight_decay": AT_LEAST_0, "grad_clip": POSITIVE, "warmup_steps": AT_LEAST_0,
        "final_lr_fraction": Rule(lambda v: 0 <= v <= 1, "in [0, 1]"), "decay_start": FRACTION,
        "betas": Rule(lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two values, each in [0, 1)"),
    },
    EvalConfig: {
        "n_samples": AT_LEAST_1, "batch_size": AT_LEAST_1, "every": AT_LEAST_0, "every_n_samples": AT_LEAST_0,
        "teacher_nfe": Rule(lambda v: all(n >= 1 for n in v), "a list of step counts, each at least 1"),
    },
}


def check_rules(instance: Any, prefix: str) -> None:
    """Range-check a loaded dataclass against its RULES and its base classes' (a subclass keeps its bases' rules
    unless it restates them), so a bad value fails at load, not hours into a run. A null value is left alone: its
    type already said whether null is allowed."""
    rules = {}
    for cls in reversed(type(instance).__mro__):
        rules |= RULES.get(cls, {})
    for name, rule in rules.items():
        value = getattr(instance, name)
        if value is not None and not rule.holds(value):
            raise ConfigError(f"{prefix}{name}: must be {rule.wants}, got {value!r}")


COMPONENT_REGISTRIES: dict[str, reg.Registry] = {
    "modality": reg.MODALITIES,
    "teacher": reg.TEACHERS,
    "generator": reg.GENERATORS,
    "fake_score": reg.FAKE_SCORES,
    "objective": reg.OBJECTIVES,
    "adversary": reg.ADVERSARIES,
    "real_data": reg.DATASETS,
    "engine": reg.ENGINES,
    "text_encoder": reg.TEXT_ENCODERS,
    "codec": reg.CODECS,
}

# Per config class, the sections that are registered components and the registry each is resolved through;
# other config classes (the teacher-training config) add theirs here.
SECTION_REGISTRIES: dict[type, dict[str, reg.Registry]] = {RunConfig: COMPONENT_REGISTRIES}


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a type annotation and convert ints to floats where a float is wanted."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        given = [arg for arg in args if arg is not type(None)]
        if len(given) == 1:                 # an optional setting: the one type's own error names the key inside
            return coerce(value, given[0], key)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"{key}: expected {_type_name(annotation)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, key)
    if annotation is float:
        if isinstance(value, str):
            value = _yaml_float(value, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: cannot check values of type {_type_name(annotation)}")


def _yaml_float(text: str, key: str) -> float:
    """YAML 1.1 reads `1e-3` (no dot) as a string; accept it as the number it means."""
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{key}: expected a number, got {text!r}") from None


def from_dict(cls: type, data: Any, key: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown or missing keys are errors naming the key."""
    prefix = f"{key}." if key else ""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{key or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown key; valid keys here: {', '.join(sorted(fields))}"
        )
    values = {}
    sections = SECTION_REGISTRIES.get(cls, {})
    for name, f in fields.items():
        if name in data:
            if name in sections:
                values[name] = load_component(f"{prefix}{name}", data[name], sections[name])
            else:
                values[name] = coerce(data[name], hints[name], f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: required key is missing")
    instance = cls(**values)
    check_rules(instance, prefix)
    return instance


SHARDABLE = {"teacher", "text_encoder"}    # sections whose `shard: true` partitions the frozen model across ranks


def load_component(section: str, data: Any, registry: reg.Registry | None = None) -> Component | None:
    """Resolve a `{kind: name, ...options}` section (or a bare name) through its registry (by default the
    run config's registry for `section`)."""
    if data is None:
        return None
    if isinstance(data, str):
        data = {"kind": data}
    if not isinstance(data, dict) or "kind" not in data:
        raise ConfigError(f"{section}.kind: required key is missing (a registered name)")
    data = dict(data)
    kind = data.pop("kind")
    shard = data.pop("shard", False) if section in SHARDABLE else False
    if not isinstance(shard, bool):
        raise ConfigError(f"{section}.shard: expected true or false, got {shard!r}")
    try:
        entry = (registry if registry is not None else COMPONENT_REGISTRIES[section]).get(kind, f"{section}.kind")
    except reg.UnknownNameError as error:
        raise ConfigError(str(error)) from None
    if entry.options is None:
        if data:
            raise ConfigError(f"{section}.{sorted(data)[0]}: unknown key; {kind!r} takes no options")
        return Component(kind, None, shard)
    return Component(kind, from_dict(entry.options, data, section), shard)


def deep_merge(base: dict, override: dict) -> dict:
    """`override` on top of `base`, merging nested mappings; a child's `kind` change replaces the section."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        old = merged.get(key)
        same_kind = not (isinstance(value, dict) and "kind" in value and isinstance(old, dict)
                         and old.get("kind") != value["kind"])
        if isinstance(value, dict) and isinstance(old, dict) and same_kind:
            merged[key] = deep_merge(old, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """The mapping of `node`, after checking its keys are distinct (merge keys `<<` may be overridden)."""
        first: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in first:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {first[key].line + 1})",
                    key_node.start_mark)
            first[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def yaml_problem(error: yaml.YAMLError) -> tuple[yaml.Mark | None, str]:
    """Where a YAML error is and what it is, in one line (PyYAML's own message quotes the text over several)."""
    if not isinstance(error, yaml.MarkedYAMLError):
        return None, " ".join(str(error).split())
    problem = error.problem or error.context or "invalid YAML"
    if error.problem and error.context:
        problem = f"{problem} ({error.context})"
    return error.problem_mark or error.context_mark, problem


def load_yaml(text: str | bytes) -> Any:
    """Parse YAML config text with duplicate keys refused."""
    return yaml.load(text, Loader=StrictLoader)


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config and resolve its `extends:` chain (paths relative to the file)."""
    path = Path(path).resolve()
    if path in seen:
        raise ConfigError(f"extends: cycle through {path}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = load_yaml(path.read_bytes()) or {}
    except yaml.YAMLError as error:
        mark, problem = yaml_problem(error)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    parents = data.pop("extends", None)
    if parents is None:
        return data
    merged: dict = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        merged = deep_merge(merged, read_yaml(path.parent / parent, (*seen, path)))
    return deep_merge(merged, data)


def apply_overrides(data: dict, overrides: list[str], sections: dict[str, reg.Registry] = COMPONENT_REGISTRIES
                    ) -> dict:
    """Apply `key.sub=value` overrides; values are parsed as YAML so lists and numbers work. A component given
    by its bare name (one of `sections`) becomes `{kind: name}` when one of its options is set."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        try:
            value = load_yaml(text)
        except yaml.YAMLError as error:
            mark, problem = yaml_problem(error)
            where = f" at column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{key}: cannot parse {text!r} as YAML: {problem}{where}") from None
        node = data
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if isinstance(child, str) and ".".join(parts[: i + 1]) in sections:
                child = {"kind": child}
            elif child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parts[: i + 1])}: is not a mapping, cannot set {key}")
            node[part] = child
            node = child
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict | None = None) -> RunConfig:
    """Load a RunConfig from a YAML file (or an already-read mapping) plus `--set` overrides, after importing the
    `plugins` it names (core/plugins.py), whose components it may then name."""
    from potstill.core.plugins import import_config_plugins

    raw = read_yaml(Path(path)) if path is not None else copy.deepcopy(data or {})
    raw = apply_overrides(raw, overrides or [])
    raw.setdefault("engine", "plain")
    import_config_plugins(raw)
    return from_dict(RunConfig, raw)


def to_dict(cfg: Any) -> Any:
    """A plain, YAML-writable mapping of a loaded config (components flattened back to `kind` + options)."""
    if isinstance(cfg, Component):
        options = to_dict(cfg.options) if cfg.options is not None else {}
        return {"kind": cfg.kind, **({"shard": True} if cfg.shard else {}), **options}
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, list | tuple):
        return [to_dict(v) for v in cfg]
    return cfg
