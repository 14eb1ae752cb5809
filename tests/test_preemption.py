"""A cluster's time limit loses nothing: SIGTERM or SIGINT during `potstill distill` saves a checkpoint at
the next step boundary and exits 143 / 130, and the resumed run logs what an uninterrupted run logs."""

import signal
import subprocess
import sys
import time

import pytest
from test_cli import potstill

from potstill.core import checkpoint as ckpt
from potstill.core.run_log import read_log
from tests_support import CONFIGS, ROOT, logged_losses

CONFIG = CONFIGS / "vector" / "gmm_dmd2.yaml"
SETTINGS = ["train.progress=false", "train.log_every=1", "train.checkpoint_every=0", "train.sample_every=0",
            "eval.n_samples=200"]


def stop_mid_run(run, signum) -> subprocess.CompletedProcess:
    """Start a long run, wait until it has logged a few steps, send `signum`, and wait for it to exit."""
    process = subprocess.Popen([sys.executable, "-m", "potstill.cli", "distill", CONFIG, "--out", run, "--set",
                                *SETTINGS, "train.steps=1000000"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    log = run / "logs" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and len(log.read_text().splitlines()) >= 5):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_checkpoints_at_the_step_boundary_and_exits(tmp_path, signum, code):
    run = tmp_path / "run"
    result = stop_mid_run(run, signum)
    assert result.returncode == code, result.stderr
    latest = ckpt.latest_checkpoint(run / "checkpoints")
    step = ckpt.checkpoint_step(latest)
    assert read_log(run / "logs" / "metrics.jsonl")[-1]["step"] == step
    assert f"stopped by {signal.Signals(signum).name} at step {step}" in result.stderr
    assert "continue with --resume" in result.stderr
    if signum != signal.SIGTERM:
        return
    end = f"train.steps={step + 10}"
    potstill("distill", CONFIG, "--out", run, "--resume", "--set", *SETTINGS, end)
    potstill("distill", CONFIG, "--out", tmp_path / "whole", "--set", *SETTINGS, end)
    assert logged_losses(run) == logged_losses(tmp_path / "whole")
