"""Score-distillation objectives, one file per method; importing this package registers them."""

from potstill.core.objectives import adversarial, cfd, dmd, dmd2, fdistill, ode_regression, sds, sid, sida, sim, vsd
from potstill.core.objectives.base import Objective

__all__ = ["Objective", "adversarial", "cfd", "dmd", "dmd2", "fdistill", "ode_regression", "sds", "sid", "sida", "sim",
           "vsd"]
