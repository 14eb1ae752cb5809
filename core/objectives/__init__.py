"""Score-distillation objectives, one file per method; importing this package registers them."""

from potstill.core.objectives import (
    adversarial,
    cd,
    cfd,
    dmd,
    dmd2,
    fdistill,
    meanflow,
    ode_regression,
    scm,
    sds,
    sid,
    sida,
    sim,
    uni_instruct,
    vsd,
)
from potstill.core.objectives.base import Objective

__all__ = ["Objective", "adversarial", "cd", "cfd", "dmd", "dmd2", "fdistill", "meanflow", "ode_regression", "scm",
           "sds", "sid", "sida", "sim", "uni_instruct", "vsd"]
