"""Test session settings for a 2-core machine, and the digits packed into shards once per session."""

import pytest
import torch

import potstill  # noqa: F401  (registers the built-in components)
from potstill.data.digits import pack_digits

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory) -> str:
    """The 1797 digits in 6 shards, as `potstill data digits` + `potstill data pack` make them."""
    folder = tmp_path_factory.mktemp("digits_shards")
    return pack_digits(str(folder / "digits-%06d.tar")).pattern
