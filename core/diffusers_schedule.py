"""A diffusers scheduler config as a potstill schedule, exactly: a DDPM-family config (DDPM, DDIM, Euler, PNDM,
DPM-Solver, ...) by its own alpha_bar table (core/discrete_schedule.py) and prediction type; a flow-matching one
(FlowMatchEulerDiscreteScheduler, or a multistep solver on flow sigmas as Wan's UniPC) as the flow schedule with its
static shift."""

from __future__ import annotations

import json
from pathlib import Path

from potstill.core.config import ConfigError
from potstill.core.discrete_schedule import DiscreteVPSchedule
from potstill.core.schedules import FlowOptions, FlowSchedule, Schedule

PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def read_scheduler_config(folder: Path, subfolder: str) -> dict:
    path = folder / subfolder / "scheduler_config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"teacher.scheduler_subfolder: no readable scheduler config at {path} "
                          f"({str(error).splitlines()[0][:200]})") from None


def is_flow_matching(config: dict) -> bool:
    """FlowMatchEulerDiscreteScheduler, or a multistep solver on flow sigmas (Wan's UniPC: flow_prediction)."""
    return config.get("_class_name", "").startswith("FlowMatch") or config.get("prediction_type") == "flow_prediction"


def flow_matching_schedule(config: dict) -> FlowSchedule:
    """A flow-matching scheduler's law: x_t = (1 - t) x0 + t eps with t its sigma and the model fed 1000 t
    (num_train_timesteps t); its training sigmas run from shift(1 / N) to 1 under the static shift
    t' = s t / (1 + (s - 1) t) (`shift`, or UniPC's `flow_shift`), which potstill's flow schedule applies to its
    sampling positions."""
    if config.get("prediction_type") == "flow_prediction" and not config.get("use_flow_sigmas"):
        raise ConfigError("teacher: the scheduler predicts flow but does not use flow sigmas (use_flow_sigmas); "
                          "its noise law is not a flow-matching one")
    if config.get("use_dynamic_shifting"):
        raise ConfigError("teacher: the scheduler shifts its times by image size (use_dynamic_shifting, Flux and "
                          "SD3.5), which is not supported yet; a static `shift` is")
    steps = config.get("num_train_timesteps", 1000)
    if steps != 1000:
        raise ConfigError(f"teacher: the flow-matching scheduler has {steps} training timesteps; the flow schedule "
                          "feeds the model 1000 t")
    shift = config.get("flow_shift") if "flow_shift" in config else config.get("shift", 1.0)
    return FlowSchedule(FlowOptions(shift=float(shift), t_min=1 / steps))


def load_scheduler_schedule(folder: Path, subfolder: str) -> tuple[Schedule, str]:
    """The schedule and prediction type of a scheduler config: a flow-matching one (flow prediction), or a
    DDPM-family one (DDPM, DDIM, Euler, PNDM, DPM-Solver, ...) by its beta table and prediction type."""
    from diffusers import DDPMScheduler

    config = read_scheduler_config(folder, subfolder)
    if is_flow_matching(config):
        return flow_matching_schedule(config), "flow"
    scheduler = DDPMScheduler.from_config(config)
    prediction = scheduler.config.prediction_type
    if prediction not in PREDICTIONS:
        raise ConfigError(f"teacher: the scheduler's prediction_type {prediction!r} is not one of "
                          f"{', '.join(PREDICTIONS)}")
    return DiscreteVPSchedule(scheduler.alphas_cumprod), PREDICTIONS[prediction]
