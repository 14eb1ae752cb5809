"""Test session settings for a 2-core machine, and the digits packed into shards once per session."""

import os

import pytest
import torch

import potstill  # noqa: F401  (registers the built-in components)
from potstill.data.digits import pack_digits

WORKER = os.environ.get("PYTEST_XDIST_WORKER")     # xdist's gw0, gw1, ...: one core each
torch.set_num_threads(1 if WORKER else 2)
if WORKER:      # in-process DeepSpeed engines of two workers must not meet on one rendezvous port
    os.environ.setdefault("MASTER_PORT", str(29500 + 10 * int(WORKER.removeprefix("gw"))))


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory) -> str:
    """The 1797 digits in 6 shards, as `potstill data digits` + `potstill data pack` make them."""
    folder = tmp_path_factory.mktemp("digits_shards")
    return pack_digits(str(folder / "digits-%06d.tar")).pattern
