"""A Denoiser: a backbone, a schedule and the backbone's prediction type, answering x0(x_t, t, cond)
and everything derived from it (eps, score, v, flow), with classifier-free guidance and a features
hook for discriminator heads. Teacher, fake score and student initialisation are all Denoisers."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
from torch import nn

from potstill.core import parallel
from potstill.core.schedules import Schedule
from potstill.core.tensors import per_sample, sample_mean

Prediction = Literal["x0", "eps", "v", "flow", "edm"]


class Denoiser(nn.Module):
    """x0-prediction from any parameterisation.

    The backbone is called as `backbone(x_in, c_noise, cond, features=...)`. With `prediction="edm"`
    the EDM preconditioning (Karras et al. 2022, reference §10) wraps it in VE coordinates
    x_E = x_t / alpha, sigma_E = sigma / alpha, so it applies to any schedule.
    """

    def __init__(self, backbone: nn.Module, schedule: Schedule, prediction: Prediction = "x0",
                 sigma_data: float = 0.5, sample_shape: tuple[int, ...] = (), num_classes: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.schedule = schedule
        self.prediction = prediction
        self.sigma_data = sigma_data
        self.sample_shape = tuple(sample_shape)
        self.num_classes = num_classes

    def _backbone_precision(self) -> contextlib.AbstractContextManager:
        """A backbone held in bfloat16 (a teacher or EMA with `train.*_dtype: bf16`, a student under DeepSpeed
        bf16) computes under bf16 autocast, so fp32 inputs meet it in any caller; others run as called."""
        first = next(self.backbone.parameters(), None)       # every parameter is cast alike
        if first is None or first.dtype != torch.bfloat16:
            return contextlib.nullcontext()
        return torch.autocast(first.device.type, dtype=torch.bfloat16)

    def _raw(self, x_t: torch.Tensor, t: torch.Tensor, cond, features: list[int] | None, **backbone_kwargs):
        with self._backbone_precision():
            return self._precondition(x_t, t, cond, features, **backbone_kwargs)

    def _precondition(self, x_t: torch.Tensor, t: torch.Tensor, cond, features: list[int] | None,
                      **backbone_kwargs):
        s = self.schedule
        if self.prediction == "edm":
            alpha = per_sample(s.alpha(t), x_t)
            sigma_e = s.edm_sigma(t)
            x_e = x_t / alpha
            sd = self.sigma_data
            c_in = per_sample(1 / (sigma_e**2 + sd**2).sqrt(), x_t)
            c_skip = per_sample(sd**2 / (sigma_e**2 + sd**2), x_t)
            c_out = per_sample(sigma_e * sd / (sigma_e**2 + sd**2).sqrt(), x_t)
            out = self.backbone(c_in * x_e, 0.25 * torch.log(sigma_e), cond, features=features, **backbone_kwargs)
            out, feats = out if features is not None else (out, None)
            return c_skip * x_e + c_out * out.to(x_t.dtype), feats
        out = self.backbone(x_t, s.c_noise(t), cond, features=features, **backbone_kwargs)
        out, feats = out if features is not None else (out, None)
        out = out.to(x_t.dtype)
        if self.prediction == "x0":
            return out, feats
        if self.prediction == "eps":
            return s.x0_from_eps(x_t, out, t), feats
        if self.prediction == "v":
            return s.x0_from_v(x_t, out, t), feats
        if self.prediction == "flow":
            return s.x0_from_flow(x_t, out, t), feats
        raise ValueError(f"prediction: unknown type {self.prediction!r}; valid: x0, eps, v, flow, edm")

    def null_condition(self, cond):
        """The unconditional input for guidance: the backbone's null label or embedding."""
        return self.backbone.null_condition(cond)

    def x0(self, x_t: torch.Tensor, t: torch.Tensor, cond=None, guidance: float = 1.0,
           **backbone_kwargs) -> torch.Tensor:
        """E[x0 | x_t]; with guidance s != 1, x0_u + s (x0_c - x0_u), the standard CFG form. `t` is [B] or, for
        video, [B, F] (one time per frame); `backbone_kwargs` (a causal video backbone's `cache=`, `write=`;
        MeanFlow's `time_extra`) go to the backbone call, per-sample tensors among them doubled with the batch
        under guidance."""
        t = _times(t, x_t)
        if guidance == 1.0 or cond is None:
            return self._raw(x_t, t, cond, None, **backbone_kwargs)[0]
        if backbone_kwargs.get("cache") is not None:
            raise ValueError(f"guidance: {guidance} doubles the batch (conditional and unconditional), which a KV "
                             "cache cannot follow; stream with guidance 1")
        doubled = {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) else v for k, v in backbone_kwargs.items()}
        both = self._raw(torch.cat([x_t, x_t]), torch.cat([t, t]),
                         _concat(cond, self.null_condition(cond)), None, **doubled)[0]
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance * (conditional - unconditional)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond=None, guidance: float = 1.0,
                **backbone_kwargs) -> torch.Tensor:
        return self.x0(x_t, t, cond, guidance, **backbone_kwargs)

    def features(self, x_t: torch.Tensor, t: torch.Tensor, cond=None,
                 layers: list[int] | None = None) -> list[torch.Tensor]:
        """Inner activations of the backbone at the given layers (default: its last), for GAN heads."""
        return self._raw(x_t, _times(t, x_t), cond, layers if layers is not None else [-1])[1]

    def eps(self, x_t, t, cond=None, guidance: float = 1.0, **backbone_kwargs):
        return self.schedule.eps_from_x0(x_t, self.x0(x_t, t, cond, guidance, **backbone_kwargs), t)

    def score(self, x_t, t, cond=None, guidance: float = 1.0, **backbone_kwargs):
        return self.schedule.score_from_x0(x_t, self.x0(x_t, t, cond, guidance, **backbone_kwargs), t)

    def v(self, x_t, t, cond=None, guidance: float = 1.0, **backbone_kwargs):
        return self.schedule.v_from_x0(x_t, self.x0(x_t, t, cond, guidance, **backbone_kwargs), t)

    def flow(self, x_t, t, cond=None, guidance: float = 1.0, **backbone_kwargs):
        return self.schedule.flow_from_x0(x_t, self.x0(x_t, t, cond, guidance, **backbone_kwargs), t)

    def dsm_loss(self, x0: torch.Tensor, cond=None, generator: torch.Generator | None = None,
                 guidance: float = 1.0, t: torch.Tensor | None = None,
                 eps: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample denoising score matching loss, weighted so it equals the schedule's native loss
        (EDM's lambda(sigma), eps-MSE for VP, velocity-MSE for flow); with `guidance`, the guided
        prediction is regressed (SiD-LSG's long guidance). `t` and `eps` are drawn unless given (SiDA
        shares them with its real samples)."""
        if t is None:
            t = parallel.draw_local(lambda n: self.schedule.sample_dsm_t(n, generator), x0.shape[0]).to(x0)
        eps = parallel.randn_like(x0) if eps is None else eps
        x_t = self.schedule.add_noise(x0, eps, t)
        error = (self.x0(x_t, t, cond, guidance) - x0) ** 2
        return self.schedule.dsm_weight(t) * sample_mean(error)


def _times(t, x_t: torch.Tensor) -> torch.Tensor:
    """t as a tensor on x_t's device and dtype: a scalar becomes [B]; [B] and per-frame [B, F] stay as they are."""
    t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device)
    return t.expand(x_t.shape[0]) if t.ndim <= 1 else t


def _concat(a, b):
    if isinstance(a, dict):
        return {k: torch.cat([a[k], b[k]]) for k in a}
    return torch.cat([a, b])


def drop_conditions(denoiser: Denoiser, cond, p: float, key: str):
    """Each sample's condition replaced by the denoiser's null condition with probability `p` (classifier-free
    guidance's training dropout), drawn for the global batch so ranks keep a one-process run's rows; `key` names
    the setting in the error for conditions that are not a tensor."""
    if cond is None or p == 0:
        return cond
    if not isinstance(cond, torch.Tensor):
        raise ValueError(f"{key}: the conditions are a {type(cond).__name__}, not a tensor; set {key}: 0")
    drop = parallel.draw_local(lambda n: torch.rand(n) < p, cond.shape[0]).to(cond.device)
    return torch.where(per_sample(drop, cond).bool(), denoiser.null_condition(cond), cond)
