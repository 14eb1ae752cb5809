"""Out-of-tree components: a config's `plugins: [my_pkg.adapters, ./my_adapter.py]` imports each module (a dotted
name, or a Python file) before the config is validated, so what they register (a modality, an objective, a
backbone, ...) can be named in that config; installed packages may instead declare an entry point in the group
`potstill.plugins`, loaded with the built-in components. Importing the same plugin twice runs it once."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path

from potstill.core.config import ConfigError

ENTRY_POINT_GROUP = "potstill.plugins"


def is_file_plugin(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry


def resolve_plugin(entry: str) -> str:
    """A file plugin as an absolute path (so a run's saved config imports it from anywhere); a dotted name as is."""
    return str(Path(entry).expanduser().resolve()) if is_file_plugin(entry) else entry


def _import_file(path: Path) -> None:
    name = f"potstill_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def import_plugins(entries: list[str]) -> None:
    """Import every plugin; a failure is an error naming the plugin and its cause."""
    for entry in entries:
        try:
            if is_file_plugin(entry):
                path = Path(resolve_plugin(entry))
                if not path.is_file():
                    raise FileNotFoundError(f"{path} does not exist")
                _import_file(path)
            else:
                importlib.import_module(entry)
        except Exception as error:
            raise ConfigError(f"plugins: cannot import {entry!r}: {type(error).__name__}: {error}") from error


def import_config_plugins(raw: dict) -> None:
    """Import the plugins a raw config names, rewriting file plugins as absolute paths in place."""
    entries = raw.get("plugins") or []
    if not isinstance(entries, list) or not all(isinstance(entry, str) for entry in entries):
        raise ConfigError(f"plugins: expected a list of module names or .py files, got {entries!r}")
    raw["plugins"] = [resolve_plugin(entry) for entry in entries]
    import_plugins(raw["plugins"])


def load_entry_point_plugins() -> None:
    """Load the installed packages' `potstill.plugins` entry points; a failure names the entry point."""
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except Exception as error:
            raise ConfigError(f"entry point {point.name!r} ({point.value}) in group {ENTRY_POINT_GROUP}: cannot "
                              f"load: {type(error).__name__}: {error}") from error
