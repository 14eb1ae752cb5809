"""The `potstill` command end to end: distill, sample, eval, resume, and errors that name the problem."""

import json
import subprocess
import sys

import pytest
import torch

from tests_support import CONFIGS, ROOT


def potstill(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "potstill.cli", *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr[-3000:])
    return result


QUICK = ["train.steps=20", "train.progress=false", "eval.n_samples=500", "train.checkpoint_every=10"]


def test_distill_sample_eval_on_an_unseen_mixture(tmp_path):
    run = tmp_path / "run"
    potstill("distill", CONFIGS / "vector" / "gmm_dmd2.yaml", "--out", run, "--set", *QUICK,
             "teacher.means=[[0,0,0],[3,3,3]]", "teacher.stds=[0.5,[0.2,0.3,0.4]]", "teacher.weights=[1,2]")
    for name in ("config.yaml", "report.json", "logs/metrics.jsonl"):
        assert (run / name).is_file(), name
    assert list((run / "logs" / "tb").iterdir())
    report = json.loads((run / "report.json").read_text())
    assert report["step"] == 20 and "swd" in report["student"]
    potstill("sample", run, "--n", 300, "--out", tmp_path / "s.pt")
    samples = torch.load(tmp_path / "s.pt")
    assert samples.shape == (300, 3) and torch.isfinite(samples).all()
    potstill("sample", run / "checkpoints" / "step_00000010", "--n", 10, "--out", tmp_path / "early.pt")
    out = potstill("eval", run, "--n", 200).stdout
    assert json.loads(out)["student"]["nfe"] == 1


def test_resume_continues_a_run(tmp_path):
    run = tmp_path / "run"
    potstill("distill", CONFIGS / "vector" / "gmm_sid.yaml", "--out", run, "--set", *QUICK)
    again = potstill("distill", CONFIGS / "vector" / "gmm_sid.yaml", "--out", run, "--set", *QUICK, check=False)
    assert again.returncode == 2 and "already holds a run; pass --resume" in again.stderr
    potstill("distill", CONFIGS / "vector" / "gmm_sid.yaml", "--out", run, "--resume", "--set", *QUICK[1:],
             "train.steps=30")
    assert json.loads((run / "report.json").read_text())["step"] == 30


@pytest.mark.parametrize(("override", "message"), [
    ("teacher.stds=[1,2,3]", "teacher.stds: 3 stds for 8 means"),
    ("objective.kind=dmdd", "objective.kind: unknown objective 'dmdd'; valid choices:"),
    ("train.batch_size=big", "train.batch_size: expected an integer"),
])
def test_bad_config_exits_with_the_key(tmp_path, override, message):
    result = potstill("distill", CONFIGS / "vector" / "gmm_dmd2.yaml", "--out", tmp_path / "r", "--set", override,
                      check=False)
    assert result.returncode == 2
    assert message in result.stderr


def test_sample_rejects_a_non_run(tmp_path):
    result = potstill("sample", tmp_path, "--n", 3, "--out", tmp_path / "x.pt", check=False)
    assert result.returncode == 2 and "neither a run directory" in result.stderr
