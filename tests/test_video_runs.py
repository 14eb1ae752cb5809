"""Every video config runs end to end on a tiny teacher trained by `potstill train-teacher`: the ODE
initialisation, Self-Forcing and CausVid from it, APT's initialisation and APT; `potstill sample` streams
past the training length with --frames, --class and --stream; the errors name their key."""


import json

import pytest
import torch

from potstill.cli import main
from potstill.core.evaluation import draw_samples, evaluate_generator
from potstill.data.moving_digits import moving_digit_clips
from potstill.modalities.video_scores import law_residuals
from potstill.runs import open_run
from tests_support import ROOT, load_benchmark
from video_fixtures import VIDEO, train_tiny_teacher

QUICK = ["train.steps=2", "train.batch_size=2", "train.log_every=1", "train.progress=false", "eval.n_samples=4",
         "eval.batch_size=4", "train.checkpoint_every=0"]


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    return train_tiny_teacher(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def ode_run(tiny_teacher, tmp_path_factory):
    """One ODE initialisation the Self-Forcing and CausVid runs start from."""
    return distill("ode_init", tmp_path_factory.mktemp("ode_init") / "ode", tiny_teacher)


def distill(name, out, teacher_file, *extra):
    main(["distill", str(VIDEO / f"moving_digits_{name}.yaml"), "--out", str(out), "--set",
          f"teacher.checkpoint={teacher_file}", *QUICK, "objective.pairs=8", "objective.pair_nfe=3",
          f"objective.pairs_dir={out.parent / 'pairs'}", *extra] if "init" in name else
         ["distill", str(VIDEO / f"moving_digits_{name}.yaml"), "--out", str(out), "--set",
          f"teacher.checkpoint={teacher_file}", *QUICK, *extra])
    return out


def test_every_video_config_runs_and_streams_past_its_training_length(tiny_teacher, ode_run, tmp_path, capsys):
    for name in ("self_forcing", "causvid"):
        run = distill(name, tmp_path / name, tiny_teacher, f"generator.init_from={ode_run}")
        assert (run / "report.json").is_file()
    apt_init = distill("apt_init", tmp_path / "apt_init", tiny_teacher)
    distill("apt", tmp_path / "apt", tiny_teacher, f"generator.init_from={apt_init}", "real_data.frames=4",
            "adversary.layers=[0, 1]")
    capsys.readouterr()
    out = tmp_path / "long.pt"
    main(["sample", str(tmp_path / "self_forcing"), "--n", "3", "--frames", "12", "--class", "7", "--stream",
          "--out", str(out)])
    printed = capsys.readouterr().out
    assert printed.count("chunk ") == 6 and "frames 11-12" in printed
    clips = torch.load(out)
    assert clips.shape == (3, 1, 12, 12, 12) and clips.min() >= -1 and clips.max() <= 1
    main(["sample", str(tmp_path / "apt"), "--n", "2", "--out", str(tmp_path / "clips.mp4")])
    assert (tmp_path / "clips.mp4").stat().st_size > 0


def test_init_from_a_run_of_another_architecture_is_refused(tiny_teacher, tmp_path, capsys):
    other = train_tiny_teacher(tmp_path / "wide", ["backbone.hidden_size=48"])
    run = distill("ode_init", tmp_path / "ode", other)
    with pytest.raises(SystemExit):
        distill("self_forcing", tmp_path / "sf", tiny_teacher, f"generator.init_from={run}")
    assert "generator.init_from" in capsys.readouterr().err


def test_sampling_past_a_bounded_cache_and_uneven_chunks_name_the_fix(tiny_teacher, tmp_path, capsys):
    run = distill("ode_init", tmp_path / "ode", tiny_teacher, "generator.cache={mode: none}")
    for frames, words in [("12", "rolling"), ("3", "generator.chunk_frames")]:
        with pytest.raises(SystemExit):
            main(["sample", str(run), "--n", "1", "--frames", frames, "--out", str(tmp_path / "x.pt")])
        assert words in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", str(run), "--n", "1", "--class", "12", "--out", str(tmp_path / "x.pt")])
    assert "--class: 12" in capsys.readouterr().err


def test_long_training_rollouts_name_what_cannot_hold_them(tiny_teacher, ode_run, tmp_path, capsys):
    for extra, words in [(["generator.rollout_frames=2"], "shorter than the teacher's clip of 4 frames"),
                         (["generator.rollout_frames=8", "generator.cache={mode: none}"], "generator.cache")]:
        with pytest.raises(SystemExit):
            distill("self_forcing", tmp_path / "sf", tiny_teacher, f"generator.init_from={ode_run}", *extra)
        assert words in capsys.readouterr().err
    run = distill("self_forcing", tmp_path / "long", tiny_teacher, f"generator.init_from={ode_run}",
                  "generator.rollout_frames=8")
    assert (run / "report.json").is_file()


def test_the_long_clip_benchmark_scores_every_row_on_one_draw(ode_run):
    bench = load_benchmark("video_long_clips")
    assert bench.parse_row(f"sinks={ode_run}:generator.cache.sink_frames=2,generator.cache.window_frames=4") == (
        "sinks", str(ode_run), ["generator.cache.sink_frames=2", "generator.cache.window_frames=4"])
    with pytest.raises(SystemExit, match="LABEL=RUN_DIR"):
        bench.parse_row(str(ode_run))
    def scores(*overrides):
        metrics = bench.score(str(ode_run), list(overrides), 16, 4, 2)
        return {k: v for k, v in metrics.items() if k != "ms_per_sample"}

    first = scores()
    assert first == scores() and "shift_residual_13_24" in first
    with pytest.raises(ValueError, match=r"generator\.cache\.window_frames: 1 is shorter than chunk_frames"):
        scores("generator.cache.window_frames=1")     # a row's settings reach the student it samples with
    table = bench.format_table([{"label": "plain", "overrides": [], "metrics": first}])
    assert table.splitlines()[-1].startswith(f"| plain | - | {first['shift_residual_1_12']:.4f} | "
                                             f"{first['shift_residual_13_24']:.4f} |")


def test_the_transition_benchmark_scores_each_frame_pair_of_the_evaluation_draw(ode_run, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))        # it reads its rows as video_long_clips does
    bench = load_benchmark("video_transitions")
    distiller = open_run(ode_run)
    clips, cond, _ = draw_samples(distiller.modality, distiller.ema.model.sample, 6, 4)
    scored = evaluate_generator(distiller.modality, distiller.ema.model, 6, 4)
    assert clips.shape[0] == 6
    assert distiller.modality.evaluate(clips, cond)["shift_residual"] == scored["shift_residual"]
    scores = bench.per_transition(clips, distiller.modality.law.velocities)
    residual, in_set = law_residuals(clips, distiller.modality.law.velocities)
    assert len(scores["residual"]) == clips.shape[2] - 1
    assert scores["residual"][2] == pytest.approx(float(residual[:, 2].mean()))
    assert scores["in_set"][0] == pytest.approx(float(in_set[:, 0].float().mean()))
    assert scores["mean_residual"] == pytest.approx(float(residual.mean()))
    table = bench.format_table([{"label": "ode", **scores}]).splitlines()
    assert table[0].endswith(f"| {clips.shape[2] - 1}->{clips.shape[2]} |")
    assert table[2].startswith(f"| ode | {scores['mean_residual']:.4f} | {scores['residual'][0]:.3f} "
                               f"({scores['in_set'][0]:.2f}) |")


def test_the_teacher_benchmark_scores_every_teacher_and_guidance_on_one_draw(tiny_teacher, monkeypatch):
    bench = load_benchmark("video_teachers")
    assert bench.parse_row(f"tiny={tiny_teacher}") == ("tiny", str(tiny_teacher))
    with pytest.raises(SystemExit, match="LABEL=TEACHER_FILE"):
        bench.parse_row(str(tiny_teacher))
    def scores():
        return {g: {k: v for k, v in m.items() if k != "ms_per_sample"}
                for g, m in bench.score(str(tiny_teacher), 2, [1.0, 3.0], 4, 2).items()}

    first = scores()
    assert first == scores() and list(first) == ["1.0", "3.0"] and first["1.0"]["nfe"] == 2
    table = bench.format_table([{"label": "tiny", "metrics": first}]).splitlines()
    assert len(table) == 4 and table[3].startswith(f"| tiny | 3.0 | {first['3.0']['shift_residual']:.3f} |")
    scales = []
    evaluate = bench.evaluate_teacher
    monkeypatch.setattr(bench, "evaluate_teacher", lambda *a, guidance: scales.append(guidance) or evaluate(
        *a, guidance=guidance))
    bench.score(str(tiny_teacher), 2, [1.0, 3.0], 4, 2)
    assert scales == [1.0, 3.0]


def test_the_class_window_benchmark_scores_each_window_of_the_teacher_length(ode_run, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))        # it reads its rows as video_long_clips does
    bench = load_benchmark("video_class_windows")
    modality = open_run(ode_run).modality
    law = modality.law
    real, _ = moving_digit_clips(12, law.canvas, 12, law.velocities, torch.Generator().manual_seed(0), law.digits)
    spliced = real.clone()
    spliced[:, :, 6:8] = real.roll(1, 0)[:, :, 6:8]             # window 2's second half from the next clip
    first = modality.classify(real[:, :, 4:6])[0].argmax(1)
    second = modality.classify(spliced[:, :, 6:8])[0].argmax(1)
    kept, unspliced = bench.window_class_kept(modality, spliced, 4), bench.window_class_kept(modality, real, 4)
    assert kept[0] == unspliced[0] and kept[2] == unspliced[2]
    assert kept[1] == pytest.approx(float((first == second).float().mean())) and len(kept) == 3
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setattr("sys.argv", ["video_class_windows.py", f"ode={ode_run}", "--frames", "8", "--n", "4",
                                     "--batch", "2", "--teacher-nfe", "2", "--teacher-guidance", "2", "--name", "w"])
    bench.main()
    rows = json.loads((tmp_path / "w.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["ode", "teacher, NFE 2, guidance 2", "real clips of the teacher's law"]
    assert [len(r["kept"]) for r in rows] == [2, 1, 2]
    assert (tmp_path / "w.md").read_text().splitlines()[-1].startswith("| real clips of the teacher's law | ")
