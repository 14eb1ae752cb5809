"""A user's perceptual distance for the consistency losses (LPIPS in CD, Song et al. 2023): a network built by a
local factory `package.module:function`, its weights from a local file (safetensors or a torch state dict), called
as d(a, b) with one distance per sample (outputs with more dimensions are summed per sample). Nothing downloads:
LPIPS built with random backbone weights (`lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True)`) and its full
state dict saved locally plugs in as is."""

from __future__ import annotations

import importlib

import torch
from einops import rearrange
from torch import nn

from potstill.core.config import ConfigError
from potstill.core.weights import listed, read_state, resolve_weights


class DistanceNetwork(nn.Module):
    """A frozen network d(a, b) -> [B]."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network.requires_grad_(False).eval()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return rearrange(self.network(a, b), "b ... -> b (...)").sum(1)


def load_distance_network(factory: str, weights: str | None, section: str) -> DistanceNetwork:
    """The network `factory` builds, with `weights` loaded strictly; errors name `{section}.distance_network` or
    `{section}.distance_weights` and the problem."""
    key, weights_key = f"{section}.distance_network", f"{section}.distance_weights"
    module_name, _, name = factory.partition(":")
    if not module_name or not name:
        raise ConfigError(f"{key}: expected 'package.module:function', got {factory!r}")
    try:
        build = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"{key}: cannot load {factory!r} ({error})") from None
    network = build()
    if weights is not None:
        path = resolve_weights(weights, weights_key)
        missing, unexpected = network.load_state_dict(read_state(path, weights_key)[0], strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights_key}: {path} does not fit {factory}: missing {listed(missing) or 'none'}; "
                             f"unexpected {listed(unexpected) or 'none'}")
    return DistanceNetwork(network)
