"""Score-distillation objectives, one file per method; importing this package registers them."""

from potstill.core.objectives import dmd2, sid
from potstill.core.objectives.base import Objective

__all__ = ["Objective", "dmd2", "sid"]
