"""potstill: distil many-step diffusion and flow-matching teachers into one-step and few-step generators.

Importing the package registers the built-in objectives, adversaries, engines, backbones, modalities
and data sources, so a config can name any of them."""

from potstill import backbones, data, modalities  # registers modality components
from potstill.core import adversarial, deepspeed_engine, engine, from_teacher, objectives  # registers core components

__version__ = "0.1.0"

__all__ = ["__version__", "adversarial", "backbones", "data", "deepspeed_engine", "engine", "from_teacher",
           "modalities", "objectives"]
