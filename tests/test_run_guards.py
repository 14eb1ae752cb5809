"""What guards a run: the non-finite guard names the culprit and the update that caused it, a resume with a
changed config is refused or applied for real and recorded, logged metrics average the steps since the
last log line, and the CLI's outputs never overwrite each other."""

import json

import pytest
import torch
import yaml
from test_cli import QUICK, potstill
from torch import nn

from potstill.core.config import OptimConfig, TrainConfig, load_config
from potstill.core.config_changes import HISTORY_FOLDER, HISTORY_LOG
from potstill.core.distiller import Distiller
from potstill.core.engine import NonFiniteError, Part, PlainEngine
from potstill.core.run_log import read_log
from potstill.core.step_loop import RunningMean
from potstill.runs import distill
from tests_support import CONFIGS, RING, make_config

RUN = {"teacher": RING, "generator": {"kind": "mlp", "hidden": 16, "depth": 2},
       "fake_score": {"kind": "mlp", "hidden": 16, "depth": 2},
       "train": {"steps": 6, "checkpoint_every": 3, "batch_size": 16},
       "eval": {"n_samples": 64, "batch_size": 64}}


def test_an_overflowing_norm_of_finite_gradients_names_the_largest():
    engine = PlainEngine(train=TrainConfig())
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    trainable = engine.prepare("generator", [Part("generator", model, OptimConfig())])
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e10)
    model[1].weight.grad[0, 0] = 3e38
    with pytest.raises(NonFiniteError, match=r"overflowed .* every gradient is finite; the largest is 1\.weight"):
        engine.step(trainable)


def test_an_update_that_makes_a_parameter_infinite_is_named():
    engine = PlainEngine(train=TrainConfig())
    model = nn.Linear(2, 2)
    trainable = engine.prepare("generator", [Part("generator", model, OptimConfig(lr=3e37, grad_clip=None))])
    with torch.no_grad():
        model.bias.fill_(-3.4e38)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    with pytest.raises(NonFiniteError, match=r"^generator: parameter bias is not finite after the generator update"):
        engine.step(trainable)


def test_a_diverging_generator_is_blamed_not_the_critic_that_reads_it(tmp_path):
    config = make_config(RUN, optim={"generator": {"lr": 1e30, "grad_clip": None}})
    with pytest.raises(NonFiniteError, match=r"^generator: its samples are not finite at step 1, before the critic "
                                             r"saw them; the generator's last update \(step 0\) diverged; the run "
                                             r"has no checkpoint yet"):
        distill(config, tmp_path / "run")


def test_the_cli_names_the_last_good_checkpoint_in_one_line(tmp_path):
    run = tmp_path / "run"
    potstill("distill", CONFIGS / "vector" / "gmm_dmd2.yaml", "--out", run, "--set", *QUICK)
    result = potstill("distill", CONFIGS / "vector" / "gmm_dmd2.yaml", "--out", run, "--resume", "--allow-change",
                      "optim.generator", "--set", *QUICK, "train.steps=25", "optim.generator.lr=1e30",
                      "optim.generator.grad_clip=null", check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "generator's last update (step 20) diverged" in lines[0]
    assert "last good checkpoint: " in lines[0] and "step_00000020" in lines[0]


def test_a_changed_config_is_refused_listing_the_keys(tmp_path):
    run = tmp_path / "run"
    distill(make_config(RUN), run)
    original = (run / "config.yaml").read_text()
    changed = make_config(RUN, train={"steps": 8, "batch_size": 32}, optim={"generator": {"lr": 3e-4}})
    with pytest.raises(ValueError, match=r"2 key\(s\): optim\.generator\.lr: 0\.0001 -> 0\.0003; "
                                         r"train\.batch_size: 16 -> 32\. .*--allow-change"):
        distill(changed, run, resume=True)
    assert (run / "config.yaml").read_text() == original


def test_an_allowed_change_reaches_the_optimizer_and_is_recorded(tmp_path):
    run = tmp_path / "run"
    distill(make_config(RUN), run)
    original = (run / "config.yaml").read_text()
    resumed = distill(make_config(RUN, train={"steps": 8}, optim={"generator": {"lr": 3e-4}}), run, resume=True,
                      allow_change=["optim.generator.lr"])
    assert [g["lr"] for g in resumed.g_train.backend.param_groups] == [3e-4]
    assert [g["lr"] for g in resumed.critic_train.backend.param_groups] == [1e-4]
    history = run / HISTORY_FOLDER
    entry = json.loads((history / HISTORY_LOG).read_text())
    assert entry["step"] == 6
    assert entry["changes"] == {"optim.generator.lr": {"old": 1e-4, "new": 3e-4}, "train.steps": {"old": 6, "new": 8}}
    assert (history / "config_until_step_00000006.yaml").read_text() == original
    assert load_config(run / "config.yaml").optim.generator.lr == 3e-4


def test_a_run_written_before_a_key_existed_resumes_with_its_default(tmp_path):
    """A config.yaml written before potstill had `optim.*.decay` (and the other schedule keys) resumes: a key
    added since reads its default on both sides; a real change is still refused."""
    run = tmp_path / "run"
    distill(make_config(RUN), run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    for part in saved["optim"].values():
        for key in ("warmup_steps", "decay", "final_lr_fraction"):
            del part[key]
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert distill(make_config(RUN, train={"steps": 8}), run, resume=True).step == 8
    with pytest.raises(ValueError, match=r"1 key\(s\): optim\.generator\.decay: 'none' -> 'cosine'"):
        distill(make_config(RUN, train={"steps": 10}, optim={"generator": {"decay": "cosine"}}), run, resume=True)


def test_train_steps_is_free_on_resume(tmp_path):
    run = tmp_path / "run"
    distill(make_config(RUN), run)
    assert distill(make_config(RUN, train={"steps": 9}), run, resume=True).step == 9


def test_running_mean_averages_each_key_over_its_own_count():
    mean = RunningMean()
    mean.add({"fake": 1.0})
    mean.add({"fake": 3.0, "dm": 10.0})
    mean.add({"fake": 5.0})
    assert mean.mean() == {"fake": 3.0, "dm": 10.0}


def test_generator_losses_reach_the_log_with_the_shipped_cadence(tmp_path):
    config = load_config(CONFIGS / "vector" / "gmm_dmd2.yaml", ["train.progress=false", "eval.n_samples=200"])
    assert config.train.log_every == 50 and config.train.generator_every == 5
    config.train.steps = 100
    distiller = Distiller(config, tmp_path)
    distiller.train()
    rows = read_log(tmp_path / "logs" / "metrics.jsonl")
    assert [row["step"] for row in rows] == [50, 100]
    for row in rows:
        assert {"dm", "g_grad_norm", "fake_dsm", "fake_grad_norm"} <= set(row), sorted(row)


def test_teacher_rows_are_evaluated_and_the_report_keeps_other_sections(tmp_path):
    run = tmp_path / "run"
    distill(make_config(RUN, eval={"teacher_nfe": [1, 3]}), run)
    report = json.loads((run / "report.json").read_text())
    assert [(row["nfe"], row["solver"]) for row in report["teacher"]] == [(1, "euler"), (3, "heun")]
    assert report["n_samples"] == 64
    report["table"] = ["kept"]
    (run / "report.json").write_text(json.dumps(report))
    out = json.loads(potstill("eval", run, "--n", 32, "--device", "cpu").stdout)
    assert out["n_samples"] == 32
    again = json.loads((run / "report.json").read_text())
    assert again["table"] == ["kept"] and again["n_samples"] == 32


def test_sample_outputs_never_overwrite_each_other(tmp_path):
    run = tmp_path / "run"
    potstill("distill", CONFIGS / "vector" / "gmm_dmd2.yaml", "--out", run, "--set", *QUICK,
             "teacher.means=[[0,0,0],[3,3,3]]", "teacher.stds=[0.5,0.5]", "teacher.weights=[1,1]")
    bad = potstill("sample", run, "--n", 10, "--out", tmp_path / "x.png", check=False)
    assert bad.returncode == 2 and "--out" in bad.stderr and ".pt" in bad.stderr
    assert not list(tmp_path.glob("x.*"))
    assert potstill("sample", run, "--n", 0, "--out", tmp_path / "x.pt", check=False).returncode == 2
    potstill("sample", run, "--n", 10, "--out", tmp_path / "x.pt", "--device", "cpu")
    assert torch.load(tmp_path / "x.pt").shape == (10, 3)


def test_a_two_dimensional_run_writes_only_the_png_it_names(tmp_path):
    run = tmp_path / "run"
    distill(make_config(RUN), run)
    out = potstill("sample", run, "--n", 50, "--out", tmp_path / "ring.png").stdout
    assert sorted(p.name for p in tmp_path.glob("ring.*")) == ["ring.png"] and "ring.png" in out


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from potstill.cli import build_parser; build_parser(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert potstill("--help").stdout.startswith("usage: potstill")


def test_demo_refuses_non_positive_steps(tmp_path):
    result = potstill("demo", "--out", tmp_path / "demo", "--steps", 0, check=False)
    assert result.returncode == 2 and "--steps" in result.stderr and not (tmp_path / "demo").exists()


def test_a_fresh_run_writes_its_config_over_a_stale_one(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("left: by a run that died before its first checkpoint\n")
    distill(make_config(RUN), run)
    assert load_config(run / "config.yaml").train.steps == 6
