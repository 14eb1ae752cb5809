"""The text-to-3D modality's noise hooks, which objectives read in place of i.i.d. noise (`modality.noise:
consistent`): for a 3-D field, CFD's multi-view consistent noise from the surface of the views just rendered; for
the identity field, each sample's own fixed noise (CFD's 2-D form: eps fixed per scene). Both refresh as CFD's
SDE option says, from a seeded counter, so a resumed run draws what an uninterrupted one would."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from potstill.core import parallel
from potstill.modalities.consistent_noise import ConsistentNoise, mix_fresh, refresh_buffers

REFRESH_SEED = 7919


class CountedRefresh(nn.Module):
    """A call counter (saved with the objective's state) that seeds each SDE refresh."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def next_generator(self) -> torch.Generator:
        self.calls += 1
        return torch.Generator().manual_seed(self.seed * REFRESH_SEED + int(self.calls))


class SurfaceNoise(CountedRefresh):
    """Consistent noise for the views a field generator rendered last (read through `last_render`)."""

    def __init__(self, noise: ConsistentNoise, last_render: Callable, seed: int) -> None:
        super().__init__(seed)
        self.noise, self._last_render = noise, last_render

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.noise.refresh(self.next_generator())
        rendered = self._last_render()
        if rendered is None or rendered.surface.shape[0] != x.shape[0]:
            raise ValueError("modality.noise: consistent noise reads the surface of the views the generator just "
                             "rendered, and it rendered none for these samples")
        fresh = parallel.randn_like(x) if self.noise.options.sqrt_beta < 1 else None
        return self.noise(rendered.surface, rendered.opacity, fresh).to(x)


class ParticleNoise(CountedRefresh):
    """One fixed noise per identity sample [count, *shape], picked by the generator's `last_index`."""

    def __init__(self, count: int, shape: tuple[int, ...], last_index: Callable, seed: int, refresh: float,
                 sqrt_beta: float) -> None:
        super().__init__(seed)
        self.register_buffer("values", torch.randn(count, *shape, generator=torch.Generator().manual_seed(seed)))
        self._last_index, self.refresh, self.sqrt_beta = last_index, refresh, sqrt_beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        refresh_buffers([self.values], self.refresh, self.next_generator())
        fresh = parallel.randn_like(x) if self.sqrt_beta < 1 else None
        return mix_fresh(self.values[self._last_index()].to(x), fresh, self.sqrt_beta)
