"""Weights files named in configs: `embedded:NAME` or a local path, read as safetensors (with the `potstill`
metadata) or as a torch state dict, and checked against a model so a wrong architecture fails in one line."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_PACKAGE = "potstill.data.embedded"
SHOWN_KEYS = 5      # differing parameter names a wrong-architecture error lists per kind


def embedded_names() -> list[str]:
    """The `embedded:NAME` choices: the weights shipped in `potstill/data/embedded/`."""
    folder = resources.files(EMBEDDED_PACKAGE)
    return sorted(EMBEDDED_PREFIX + entry.name.removesuffix(".safetensors") for entry in folder.iterdir()
                  if entry.name.endswith(".safetensors"))


def resolve_weights(path: str, key: str) -> Path:
    """`embedded:NAME` names weights shipped in the package; anything else is a local file. Errors name `key`."""
    if path.startswith(EMBEDDED_PREFIX):
        if path not in embedded_names():
            raise ValueError(f"{key}: unknown embedded weights {path!r}; valid choices: {', '.join(embedded_names())}")
        return Path(str(resources.files(EMBEDDED_PACKAGE) / f"{path[len(EMBEDDED_PREFIX):]}.safetensors"))
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
    metadata = read_metadata(path, key)
    return load_file(str(path)), metadata


def read_metadata(path: Path, key: str) -> dict[str, Any]:
    """The `potstill` metadata of a weights file, read from a safetensors header without its tensors ({} for a
    torch checkpoint, which records none); a file of another format is an error naming `key`."""
    if path.suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {}).get("potstill", "{}"))
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


def load_frozen(module: torch.nn.Module, path: str, key: str, what: str) -> torch.nn.Module:
    """`module` with the weights `path` names (`embedded:NAME` or a file), checked against its architecture,
    frozen in eval mode: how scoring networks are loaded. Every error names `key`."""
    state, _ = read_state(resolve_weights(path, key), key)
    check_state(module.state_dict(), state, key, path, what)
    module.load_state_dict(state)
    return module.eval().requires_grad_(False)
