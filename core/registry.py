"""Named registries: a config names a component, the registry finds its builder and its typed options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Entry:
    """A registered component: how to build it and the dataclass its options load into."""

    name: str
    builder: Callable[..., Any]
    options: type | None


class UnknownNameError(KeyError):
    """A config named a component that no registry entry has; the message lists the valid names."""

    def __str__(self) -> str:
        return str(self.args[0])


_PENDING_LOADERS: list[Callable[[], None]] = []


def on_first_lookup(loader: Callable[[], None]) -> None:
    """Run `loader` (which imports and so registers components) before any registry is first read: importing
    the package stays cheap, so `potstill --help` starts without torch."""
    _PENDING_LOADERS.append(loader)


def _run_pending_loaders() -> None:
    while _PENDING_LOADERS:
        _PENDING_LOADERS.pop(0)()


class Registry:
    """A name -> (builder, options dataclass) table for one kind of component."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, options: type | None = None) -> Callable[[Callable], Callable]:
        """Decorator: register `builder` under `name`, its config options loaded into `options`."""

        def decorate(builder: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, builder, options)
            return builder

        return decorate

    def get(self, name: str, key: str | None = None) -> Entry:
        """The entry for `name`; an unknown name raises an error naming the config key and the choices."""
        _run_pending_loaders()
        if name not in self._entries:
            where = f"{key}: " if key else ""
            raise UnknownNameError(
                f"{where}unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        _run_pending_loaders()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        _run_pending_loaders()
        return name in self._entries


MODALITIES = Registry("modality")
TEACHERS = Registry("teacher")
GENERATORS = Registry("generator")
FAKE_SCORES = Registry("fake score")
OBJECTIVES = Registry("objective")
ADVERSARIES = Registry("adversary")
BACKBONES = Registry("backbone")
DATASETS = Registry("dataset")
SCHEDULES = Registry("schedule")
ENGINES = Registry("engine")
TEXT_ENCODERS = Registry("text encoder")
CODECS = Registry("codec")
FIELDS = Registry("field")
