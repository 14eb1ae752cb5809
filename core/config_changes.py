"""What a resume may change: the config a run is continued with is compared key by key with the one it was
trained with. Keys that do not alter the training trajectory are free; any other change is refused unless
the user names it (`--allow-change KEY`), and every change is recorded in the run's config history."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from potstill.core.config import ConfigError, to_dict

FREE_ON_RESUME = ("train.steps", "train.progress", "train.log_every", "train.sample_every", "train.checkpoint_every",
                  "train.keep_checkpoints", "eval")
HISTORY_FOLDER = "config_history"
HISTORY_LOG = "changes.jsonl"
UNSET = "<unset>"


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value for every leaf of a nested mapping (lists are leaves)."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat |= flatten(value, f"{prefix}{key}" if not prefix else f"{prefix}.{key}")
    return flat


def changed_keys(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """Every dotted key whose value differs, as (old, new); a key present on one side only reads `<unset>`."""
    before, after = flatten(old), flatten(new)
    keys = sorted(set(before) | set(after))
    return {k: (before.get(k, UNSET), after.get(k, UNSET)) for k in keys if before.get(k, UNSET) != after.get(k, UNSET)}


def with_defaults(saved: dict, load: Callable[[dict], Any]) -> dict:
    """A run's saved config as this version loads it (`load` then `to_dict`), so a key added to potstill since the
    run was written reads its default on both sides and is no change; as saved when it no longer loads."""
    try:
        return to_dict(load(saved))
    except (ConfigError, ValueError, KeyError):
        return saved


def covers(pattern: str, key: str) -> bool:
    """Whether a named key or section (`optim.generator`) covers the dotted `key`."""
    return key == pattern or key.startswith(pattern + ".")


def check_resume_changes(saved: dict, requested: dict, allowed: list[str]) -> dict[str, tuple[Any, Any]]:
    """The changes between the run's saved config and the requested one; refused, listing each changed key,
    unless each is free on resume or covered by `allowed`."""
    changes = changed_keys(saved, requested)
    refused = [k for k in changes if not any(covers(p, k) for p in (*FREE_ON_RESUME, *allowed))]
    if refused:
        listed = "; ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in refused)
        raise ConfigError(f"--resume: the config differs from the run's config.yaml in {len(refused)} key(s): "
                          f"{listed}. Resume with the run's own config, or pass --allow-change KEY for each to "
                          f"apply it (free on resume: {', '.join(FREE_ON_RESUME)})")
    return changes


def record_changes(run_dir: Path, step: int, changes: dict[str, tuple[Any, Any]], config: dict) -> None:
    """Keep the config in force until now under `config_history/`, log the changes, write the new config.yaml."""
    history = run_dir / HISTORY_FOLDER
    history.mkdir(exist_ok=True)
    shutil.copy2(run_dir / "config.yaml", history / f"config_until_step_{step:08d}.yaml")
    entry = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "changes": {k: {"old": old, "new": new} for k, (old, new) in changes.items()}}
    with open(history / HISTORY_LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")
    write_config_file(run_dir / "config.yaml", config)


def write_config_file(path: Path, config: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
