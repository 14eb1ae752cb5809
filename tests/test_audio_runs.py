"""Every audio config runs end to end on a tiny teacher trained by `potstill train-teacher`, and `potstill sample`
writes a folder of wav files with a spectrogram grid, a wav, a tensor, at a chosen class and step count; ARC
without real generator inputs is refused by name."""

import json

import pytest
import soundfile
import torch
from audio_fixtures import AUDIO, train_tiny_tones_teacher

from potstill.cli import main
from potstill.core.evaluation import evaluate_generator, evaluate_teacher
from potstill.core.teacher_file import read_teacher_file
from potstill.demo_audio import CLIPS_PER_CLASS, write_clips
from potstill.runs import open_run
from tests_support import load_benchmark

QUICK = ["train.steps=2", "train.batch_size=4", "train.log_every=1", "train.progress=false", "eval.n_samples=8",
         "eval.batch_size=8", "train.checkpoint_every=0", "modality.classifier=null"]


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    return train_tiny_tones_teacher(tmp_path_factory.mktemp("teacher"))


def distill(name, out, teacher_file, *extra):
    main(["distill", str(AUDIO / f"tones_{name}.yaml"), "--out", str(out), "--set",
          f"teacher.checkpoint={teacher_file}", *QUICK, *extra])
    return out


def test_the_teacher_config_models_spectrograms_sized_by_the_clips_and_classes(tiny_teacher):
    """`tones_teacher.yaml` at 512 samples in three classes: the spectrogram codec's 256 bins become the backbone's
    channels and the three classes its labels, with no backbone setting changed."""
    _, metadata = read_teacher_file(str(tiny_teacher))
    assert metadata["codec"]["kind"] == "spectrogram"
    assert metadata["sample_shape"] == [256, 9] and metadata["backbone_options"]["in_channels"] == 256
    assert metadata["num_classes"] == metadata["backbone_options"]["num_classes"] == 3


@pytest.mark.parametrize("name", ["arc", "dmd2", "sid"])
def test_every_audio_config_runs(name, tiny_teacher, tmp_path):
    run = distill(name, tmp_path / name, tiny_teacher)
    assert {"pitch_accuracy", "purity", "impurity"} <= set(read_report(run)["student"])


def read_report(run):
    return json.loads((run / "report.json").read_text())


def test_samples_as_wav_folder_tensor_with_class_and_steps(tiny_teacher, tmp_path):
    run = distill("arc", tmp_path / "arc", tiny_teacher)
    folder = tmp_path / "wavs"
    main(["sample", str(run), "--n", "3", "--class", "2", "--out", str(folder)])
    wavs = sorted(folder.glob("*.wav"))
    assert [w.name for w in wavs] == [f"sample_{i:04d}_class2.wav" for i in range(3)]
    assert (folder / "spectrograms.png").stat().st_size > 0
    audio, rate = soundfile.read(wavs[0], dtype="float32", always_2d=True)
    assert rate == 8000 and audio.shape == (512, 1) and soundfile.info(wavs[0]).subtype == "PCM_16"
    main(["sample", str(run), "--n", "2", "--steps", "4", "--out", str(tmp_path / "x.pt")])
    clips = torch.load(tmp_path / "x.pt")
    assert clips.shape == (2, 1, 512) and clips.abs().max() <= 1
    main(["sample", str(run), "--n", "2", "--out", str(tmp_path / "x.wav")])
    assert soundfile.info(tmp_path / "x.wav").frames == 1024


def test_the_demo_writes_decoded_clips_of_every_class(tiny_teacher, tmp_path):
    run = distill("arc", tmp_path / "arc", tiny_teacher)
    folder = write_clips(open_run(run, "cpu"), tmp_path / "clips")
    wavs = sorted(folder.glob("*.wav"))
    assert len(wavs) == 3 * CLIPS_PER_CLASS
    audio, rate = soundfile.read(wavs[0], always_2d=True)
    assert rate == 8000 and audio.shape == (512, 1)


def test_arc_needs_real_generator_inputs_and_output_kinds_are_named(tiny_teacher, tmp_path, capsys):
    with pytest.raises(SystemExit):
        distill("arc", tmp_path / "noise", tiny_teacher, "generator.inputs=noise")
    assert "generator.inputs: real" in capsys.readouterr().err
    run = distill("sid", tmp_path / "sid", tiny_teacher)
    with pytest.raises(SystemExit):
        main(["sample", str(run), "--n", "2", "--out", str(tmp_path / "x.mp3")])
    assert ".wav" in capsys.readouterr().err


def test_the_pingpong_benchmark_scores_student_and_teacher_weights_under_one_sampler(tiny_teacher, tmp_path):
    """At the student's own times its row is the run's own score; at the single time 1 the teacher's weights
    ping-pong to the teacher's one-step ODE (the x0 prediction from noise)."""
    bench = load_benchmark("pingpong_times")
    distiller = open_run(distill("arc", tmp_path / "arc", tiny_teacher))
    own = distiller.ema.model.times.tolist()
    rows = bench.score(distiller, [own, [1.0]], 8, 8)
    assert [(r["weights"], r["times"]) for r in rows] == [("student", own), ("teacher", own), ("student", [1.0]),
                                                          ("teacher", [1.0])]
    student = evaluate_generator(distiller.modality, distiller.ema.model, 8, 8)
    assert rows[0]["impurity"] == pytest.approx(student["impurity"])
    teacher = evaluate_teacher(distiller.modality, distiller.teacher, 1, 8, 8)
    assert rows[3]["impurity"] == pytest.approx(teacher["impurity"], rel=1e-4)
    assert bench.parse_times("1,0.5,0.02") == [1.0, 0.5, 0.02]
    with pytest.raises(SystemExit, match="comma-separated numbers"):
        bench.parse_times("1;0.5")
    table = bench.format_table(rows, ["impurity"]).splitlines()
    assert table[5] == f"| teacher | 1 | {rows[3]['impurity']:.3g} |"
