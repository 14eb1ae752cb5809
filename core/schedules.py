"""Noise processes on one interface: x_t = alpha(t) x0 + sigma(t) eps (reference §10).

EDM/VE uses t = sigma; VP uses t in (0, 1] with alpha^2 + sigma^2 = 1; rectified flow uses
alpha = 1 - t, sigma = t. Every objective asks the schedule for noise levels, conversions and
time draws, so none of them needs to know which process the teacher was trained with.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from potstill.core.config import from_dict
from potstill.core.registry import SCHEDULES
from potstill.core.tensors import per_sample


class Schedule(ABC):
    """Forward process: noise levels, their time derivatives, time draws and x0/eps/v/score conversions."""

    t_min: float
    t_max: float

    @abstractmethod
    def alpha(self, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def sigma(self, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """d alpha / dt, used by the probability-flow ODE and flow-velocity conversions."""

    @abstractmethod
    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """d sigma / dt."""

    @abstractmethod
    def t_at(self, position: torch.Tensor) -> torch.Tensor:
        """Map a position in [0, 1] (0 = least noise, 1 = most) onto the schedule's t; the grid that
        DMD2's `[20, 980]` and SiD's `tmax = 800` index into (reference §1, §3)."""

    @abstractmethod
    def sample_dsm_t(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Times for denoising score matching, drawn from the process's own training distribution."""

    @abstractmethod
    def dsm_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample weight of ||D(x_t) - x0||^2 that equals the process's native training loss."""

    @abstractmethod
    def c_noise(self, t: torch.Tensor) -> torch.Tensor:
        """The time value a backbone is given as its noise conditioning."""

    def sample_t(self, n: int, low: float = 0.0, high: float = 1.0, discrete: int = 0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw t at uniform positions in [low, high]; with `discrete = K`, on the K-point grid instead
        (DMD2 draws indices U{20..980} of a 1000-point grid: `low=0.02, high=0.98, discrete=1000`)."""
        if discrete:
            lo, hi = round(low * (discrete - 1)), round(high * (discrete - 1))
            index = torch.randint(lo, hi + 1, (n,), generator=generator)
            position = index.double() / (discrete - 1)
        else:
            position = low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)
        return self.t_at(position).float()

    def sampling_times(self, steps: int) -> torch.Tensor:
        """`steps + 1` decreasing times for a sampler, from t_max down to 0 (clean data)."""
        position = torch.linspace(1.0, 0.0, steps, dtype=torch.float64) if steps > 1 else torch.ones(1)
        return torch.cat([self.t_at(position.double()), torch.zeros(1, dtype=torch.float64)]).float()

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return per_sample(self.alpha(t), x0) * x0 + per_sample(self.sigma(t), x0) * eps

    def eps_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x_t - per_sample(self.alpha(t), x_t) * x0) / per_sample(self.sigma(t), x_t)

    def x0_from_eps(self, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x_t - per_sample(self.sigma(t), x_t) * eps) / per_sample(self.alpha(t), x_t)

    def score_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """s = (alpha x0 - x_t) / sigma^2, Tweedie's formula read backwards."""
        return (per_sample(self.alpha(t), x_t) * x0 - x_t) / per_sample(self.sigma(t) ** 2, x_t)

    def x0_from_score(self, x_t: torch.Tensor, score: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x_t + per_sample(self.sigma(t) ** 2, x_t) * score) / per_sample(self.alpha(t), x_t)

    def v_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = alpha eps - sigma x0 (Salimans & Ho 2022)."""
        eps = self.eps_from_x0(x_t, x0, t)
        return per_sample(self.alpha(t), x_t) * eps - per_sample(self.sigma(t), x_t) * x0

    def x0_from_v(self, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2), which is alpha x_t - sigma v for VP."""
        a, s = per_sample(self.alpha(t), x_t), per_sample(self.sigma(t), x_t)
        return (a * x_t - s * v) / (a**2 + s**2)

    def flow_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Flow velocity u = dx_t/dt = alpha' x0 + sigma' eps (u = eps - x0 for rectified flow)."""
        eps = self.eps_from_x0(x_t, x0, t)
        return per_sample(self.d_alpha(t), x_t) * x0 + per_sample(self.d_sigma(t), x_t) * eps

    def x0_from_flow(self, x_t: torch.Tensor, u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Solve x_t = alpha x0 + sigma eps, u = alpha' x0 + sigma' eps for x0."""
        a, s = per_sample(self.alpha(t), x_t), per_sample(self.sigma(t), x_t)
        da, ds = per_sample(self.d_alpha(t), x_t), per_sample(self.d_sigma(t), x_t)
        return (ds * x_t - s * u) / (ds * a - s * da)

    def edm_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """The equivalent VE noise level sigma/alpha (reference §10: VP -> EDM, RF -> EDM)."""
        return self.sigma(t) / self.alpha(t)

    def t_at_edm_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """The t whose EDM sigma is `sigma`, in float64, differentiable (the consistency objectives' tangents run
        through it). Here for any schedule: bisection on the position (the EDM sigma rises with it), clamped to the
        schedule's ends, then one Newton step t - (g(t) - sigma) / g'(t), which leaves the value where it is and
        gives it the derivative 1 / g'(t); EDM and flow schedules override it with their closed forms."""
        target = sigma.double()
        low = torch.zeros_like(target)
        high = torch.ones_like(target)
        with torch.no_grad():
            for _ in range(60):
                middle = (low + high) / 2
                below = self.edm_sigma(self.t_at(middle)).double() < target
                low, high = torch.where(below, middle, low), torch.where(below, high, middle)
            t = self.t_at((low + high) / 2).double()
            alpha, s = self.alpha(t).double(), self.sigma(t).double()
            slope = (self.d_sigma(t).double() * alpha - s * self.d_alpha(t).double()) / alpha**2
        return t - (s / alpha - target) / slope


@dataclass
class EDMOptions:
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2


class EDMSchedule(Schedule):
    """EDM / variance exploding (Karras et al. 2022): alpha = 1, sigma = t, Karras grid with rho = 7."""

    def __init__(self, options: EDMOptions | None = None) -> None:
        self.options = options or EDMOptions()
        self.t_min, self.t_max = self.options.sigma_min, self.options.sigma_max
        self.sigma_data = self.options.sigma_data

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return t

    def d_alpha(self, t):
        return torch.zeros_like(t)

    def d_sigma(self, t):
        return torch.ones_like(t)

    def t_at(self, position):
        o = self.options
        lo, hi = o.sigma_min ** (1 / o.rho), o.sigma_max ** (1 / o.rho)
        return (lo + position * (hi - lo)) ** o.rho

    def sample_dsm_t(self, n, generator=None):
        o = self.options
        return torch.exp(o.p_mean + o.p_std * torch.randn(n, generator=generator))

    def dsm_weight(self, t):
        sd = self.sigma_data
        return (t**2 + sd**2) / (t * sd) ** 2

    def c_noise(self, t):
        return 0.25 * torch.log(t)

    def t_at_edm_sigma(self, sigma):
        return sigma.double()


@dataclass
class VPOptions:
    beta_min: float = 0.1
    beta_max: float = 20.0
    cosine_s: float = 0.008
    t_min: float = 1e-3


class VPSchedule(Schedule):
    """Variance preserving (DDPM): alpha = sqrt(abar), sigma = sqrt(1 - abar), linear or cosine abar.

    The linear form is the continuous limit of DDPM's betas 1e-4..0.02 over 1000 steps (beta_min 0.1,
    beta_max 20), so c_noise = 999 t is the DDPM timestep index a DiT checkpoint expects."""

    def __init__(self, kind: str = "linear", options: VPOptions | None = None) -> None:
        self.kind = kind
        self.options = options or VPOptions()
        self.t_min, self.t_max = self.options.t_min, 1.0

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        o = self.options
        if self.kind == "linear":
            return torch.exp(-(o.beta_min * t + 0.5 * (o.beta_max - o.beta_min) * t**2))
        s = o.cosine_s
        ratio = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
        return ratio.clamp(min=1e-6, max=1.0)

    def d_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        o = self.options
        if self.kind == "linear":
            return -(o.beta_min + (o.beta_max - o.beta_min) * t) * self.alpha_bar(t)
        s = o.cosine_s
        theta = (t + s) / (1 + s) * math.pi / 2
        return -torch.sin(2 * theta) * math.pi / (2 * (1 + s)) / math.cos(s / (1 + s) * math.pi / 2) ** 2

    def alpha(self, t):
        return self.alpha_bar(t).sqrt()

    def sigma(self, t):
        return (1 - self.alpha_bar(t)).clamp(min=0).sqrt()

    def d_alpha(self, t):
        return self.d_alpha_bar(t) / (2 * self.alpha(t))

    def d_sigma(self, t):
        return -self.d_alpha_bar(t) / (2 * self.sigma(t))

    def t_at(self, position):
        return self.t_min + position * (self.t_max - self.t_min)

    def sample_dsm_t(self, n, generator=None):
        return self.t_at(torch.rand(n, generator=generator))

    def dsm_weight(self, t):
        return self.alpha_bar(t) / (1 - self.alpha_bar(t))

    def c_noise(self, t):
        return 999.0 * t


@dataclass
class FlowOptions:
    shift: float = 1.0
    t_min: float = 1e-3
    logit_mean: float = 0.0
    logit_std: float = 1.0


class FlowSchedule(Schedule):
    """Rectified flow (t = 0 is data): alpha = 1 - t, sigma = t, with the timestep shift
    t' = k t / (1 + (k - 1) t) and logit-normal training times (SD3)."""

    def __init__(self, options: FlowOptions | None = None) -> None:
        self.options = options or FlowOptions()
        self.t_min, self.t_max = self.options.t_min, 1.0

    def alpha(self, t):
        return 1 - t

    def sigma(self, t):
        return t

    def d_alpha(self, t):
        return -torch.ones_like(t)

    def d_sigma(self, t):
        return torch.ones_like(t)

    def shift(self, t: torch.Tensor) -> torch.Tensor:
        k = self.options.shift
        return k * t / (1 + (k - 1) * t)

    def t_at(self, position):
        return self.shift(self.t_min + position * (self.t_max - self.t_min))

    def t_at_edm_sigma(self, sigma):
        s = sigma.double()
        return s / (1 + s)

    def sample_dsm_t(self, n, generator=None):
        o = self.options
        u = torch.sigmoid(o.logit_mean + o.logit_std * torch.randn(n, generator=generator))
        return self.shift(u.clamp(self.t_min, self.t_max))

    def dsm_weight(self, t):
        return 1 / t**2

    def c_noise(self, t):
        return 1000.0 * t


SCHEDULES.register("edm", EDMOptions)(EDMSchedule)
SCHEDULES.register("vp_linear", VPOptions)(lambda options: VPSchedule("linear", options))
SCHEDULES.register("vp_cosine", VPOptions)(lambda options: VPSchedule("cosine", options))
SCHEDULES.register("flow", FlowOptions)(FlowSchedule)


def build_schedule(name: str, options: dict | None = None, key: str = "schedule") -> Schedule:
    """A schedule by registered name, its options given as a mapping (validated like any config)."""
    entry = SCHEDULES.get(name, key)
    return entry.builder(from_dict(entry.options, options or {}, key + "_options"))
