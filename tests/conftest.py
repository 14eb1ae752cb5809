"""Test session settings for a 2-core machine."""

import torch

import potstill  # noqa: F401  (registers the built-in components)

torch.set_num_threads(2)
