"""DeepSpeed with 2 ranks on gloo (CPU): the teacher is split in half and answers as the whole one does,
a 2-rank distillation logs the losses of the single-process run with the same global batch, and a run
killed mid-way resumes on the same loss curve. Each launch costs ~20 s of start-up, so they are few."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from diffusers_fixtures import tiny_wan_transformer
from safetensors.torch import load_file, save_file

from potstill.backbones.dit import DiT, DiTOptions
from potstill.core.config import ConfigError, load_config
from potstill.runs import distill, open_run
from tests_support import CONFIGS, ROOT, logged_losses
from video_fixtures import VIDEO, train_tiny_teacher

DIGITS = CONFIGS / "image" / "digits_dmd2_deepspeed.yaml"
MIXTURE = CONFIGS / "vector" / "gmm_dmd2_deepspeed.yaml"
QUICK = ["train.progress=false", "train.log_every=1", "eval.n_samples=100", "eval.batch_size=100",
         "train.sample_every=0"]
DIGITS_RUN = [*QUICK, "train.steps=12", "train.checkpoint_every=3", "train.batch_size=16", "train.grad_accum=2",
              "train.activation_checkpointing=true"]
MIXTURE_RUN = [*QUICK, "train.steps=20", "train.checkpoint_every=0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(*args: str, ranks: int = 2) -> list[str]:
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks), "--master_port",
            str(free_port()), *args]


def distill_command(config: Path, out: Path, overrides: list[str], resume: bool = False, ranks: int = 2) -> list[str]:
    return launch_command("--module", "potstill.launch", str(config), "--out", str(out),
                          *(["--resume"] if resume else []), "--set", *overrides, ranks=ranks)


def run_launch(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=None if env is None else {**os.environ, **env})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def plain_losses(config: Path, overrides: list[str], out: Path) -> list[dict]:
    distill(load_config(config, [*overrides, "engine=plain"]), out)
    return logged_losses(out)


def assert_same_losses(multi: list[dict], single: list[dict], rel: float = 1e-4, abs_: float = 1e-6) -> None:
    """Every scalar both runs log agrees (DeepSpeed logs one joint norm for a critic of two parts, the
    plain engine one per part, so those are not compared)."""
    assert [row["step"] for row in multi] == [row["step"] for row in single]
    for a, b in zip(multi, single, strict=True):
        keys = sorted(a.keys() & b.keys())
        assert len(keys) > 2
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=rel, abs=abs_), f"step {a['step']} {key}"


IN_MEMORY = ["real_data=digits"]     # every rank draws the global batch of digits: comparable with one process


@pytest.fixture(scope="module")
def digits_two_ranks(tmp_path_factory) -> Path:
    """The reference 2-rank digits DMD2 run: sharded teacher, ZeRO-3 student and critic, 2 micro-batches,
    real digits drawn in memory so that one process with the same global batch sees the same ones."""
    out = tmp_path_factory.mktemp("ds") / "digits"
    stdout = run_launch(distill_command(DIGITS, out, [*DIGITS_RUN, *IN_MEMORY]), ROOT)
    assert "rank 0/2: teacher parameters held" in stdout and "rank 1/2: teacher parameters held" in stdout
    return out


@pytest.fixture(scope="module")
def shard_run(digits_shards):
    """The same run streaming packed digits shards, split by rank, 2 DataLoader workers per rank."""
    return [*DIGITS_RUN, f"real_data.shards={digits_shards}", "real_data.workers=2"]


@pytest.fixture(scope="module")
def digits_two_ranks_from_shards(tmp_path_factory, shard_run) -> Path:
    out = tmp_path_factory.mktemp("ds") / "shards"
    run_launch(distill_command(DIGITS, out, shard_run), ROOT)
    return out


def test_sharded_teacher_holds_half_and_answers_as_the_whole(tmp_path):
    """Also: no rank JIT-builds DeepSpeed's inference-only shared-memory op (a killed build's lock would
    hang every later start), so the extensions folder stays empty."""
    script = ROOT / "tests" / "distributed" / "sharded_teacher.py"
    extensions = tmp_path / "torch_extensions"
    extensions.mkdir()
    run_launch(launch_command(str(script), str(tmp_path)), ROOT, env={"TORCH_EXTENSIONS_DIR": str(extensions)})
    assert list(extensions.iterdir()) == []
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    total = reports[0]["total"]
    assert sum(r["held"] for r in reports) >= total
    for r in reports:
        assert r["world_size"] == 2 and r["whole_held"] == total
        assert r["held"] == pytest.approx(total / 2, rel=0.01)
        assert r["x0_max_difference"] <= 1e-5 * r["x0_scale"]
        assert r["grad_max_difference"] <= 1e-5 * r["grad_scale"]


def test_zero3_frees_each_gathered_weight_after_its_forward(tmp_path):
    """With torch's F.linear, autograd keeps every gathered weight a backward needs (a transposed view of it) from
    forward to backward; through core/zero3_linear.py it keeps one, nn.MultiheadAttention's packed in-projection,
    which the attention slices before F.linear (a slice is not a ZeRO parameter). The first layer's weight is kept
    by neither (its input needs no gradient). Gradients equal the whole model's; R1's second backward reads weights
    ZeRO-3 has released, on a trained model and on a frozen one (a sharded teacher), which is why configs asking
    for it are refused."""
    run_launch(launch_command(str(ROOT / "tests" / "distributed" / "zero3_linear.py"), str(tmp_path)), ROOT)
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["held_with_torch_linear"] == report["weights"] - 1
        assert report["held"] == 1
        assert report["loss_gradient_gap"] < 1e-6
        assert report["r1_error"] and report["r1_error_frozen"]


@pytest.mark.parametrize(("config", "overrides", "message"), [
    (CONFIGS / "vector" / "gmm_scm.yaml", [], r"engine\.zero_stage: scm takes the student's JVP"),
    (CONFIGS / "vector" / "gmm_meanflow.yaml", [], r"engine\.zero_stage: meanflow takes the student's JVP"),
    (DIGITS, ["adversary.r1_weight=1.0"], r"adversary\.r1_weight: R1 differentiates the discriminator twice"),
    (DIGITS, ["adversary.r1_weight=1.0", "engine.zero_stage=2", "adversary.network=teacher"],
     r"adversary\.r1_weight"),
])
def test_zero3_refuses_what_it_cannot_differentiate(tmp_path, config, overrides, message):
    """A JVP through a ZeRO-3 student, or R1 through a ZeRO-3 discriminator or a sharded teacher's features, fail
    deep inside DeepSpeed or autograd: they are refused at build, by key."""
    settings = [*QUICK, "engine.kind=deepspeed", "engine.zero_stage=3", "teacher.shard=true", *overrides]
    with pytest.raises(ConfigError, match=message):
        distill(load_config(config, settings), tmp_path / "run")


def write_dit_teacher(path: Path, options: DiTOptions) -> Path:
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in DiT(options).state_dict().items()}
    save_file(state, path, metadata={"potstill": json.dumps({"dit": asdict(options)})})
    return path


def test_a_teacher_built_under_zero3_never_exists_whole_on_a_rank(tmp_path):
    """ZeRO-3 construction (`teacher.shard`): the DiT is made on the meta device and each parameter streams from
    its safetensors file alone into its partitions; gathered back, the weights equal the file's. The student is
    copied partition by partition (equal to the teacher's slices, partitioned, trainable); a whole copy gathers one
    parameter at a time. Each rank's resident memory grows during the build by at most its half of the teacher,
    the largest tensor and 32 MiB (allocator slack), where building it whole would take all of it; rank 0, which
    reads the file, also holds the file's mapped pages (page cache the kernel reclaims under pressure). With 3/4 of
    the teacher's bytes to spend (`train.memory_per_rank_gib`), it is refused on one rank before it is read, with
    the remedy, and built split over two. A diffusers Wan transformer saved in shards streams into its partitions
    from its index the same way, equal to its whole load, with the RoPE tables it computes as it is made. The
    check for non-finite parameters reads every element the ranks hold, once, and none of the partitions'
    uninitialised padding (a NaN there once stopped a run at its first update)."""
    network = DiTOptions(input_size=8, patch_size=2, in_channels=4, hidden_size=384, depth=8, num_heads=6,
                         num_classes=10, learn_sigma=False)
    tiny = replace(network, hidden_size=32, depth=1, num_heads=2)
    files = [write_dit_teacher(tmp_path / f"{name}.safetensors", options)
             for name, options in (("tiny", tiny), ("teacher", network))]
    wan = tmp_path / "wan"
    tiny_wan_transformer().save_pretrained(wan, max_shard_size="20KB")
    assert len(list(wan.glob("*.safetensors"))) > 1
    script = ROOT / "tests" / "distributed" / "zero_build.py"
    run_launch(launch_command(str(script), *map(str, files), str(tmp_path), str(wan)), ROOT)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    total = reports[0]["teacher_total"]
    assert sum(r["teacher_held"] for r in reports) == pytest.approx(total, rel=1e-3)
    assert sum(r["head_held"] for r in reports) == reports[0]["head_total"] and sum(r["head_padded"] for r in reports)
    for r in reports:
        assert r["teacher_partitioned"] and r["student_partitioned"] and r["student_trains"]
        assert r["whole_copy_whole"] and r["whole_copy_equal"]
        assert r["mismatched"] == [] and r["copies_differ"] == []
        assert r["padding_flagged"] is None and r["held_nan_found"]
        assert r["wan_partitioned"] and r["wan_differ"] == [] and r["wan_buffers_equal"]
        assert "teacher.checkpoint: its parameters need" in r["refused_whole"] and "split it across ranks" in \
            r["refused_whole"]
        assert r["teacher_held"] == pytest.approx(total / 2, rel=0.01)
        mapped_file = (tmp_path / "teacher.safetensors").stat().st_size if r["rank"] == 0 else 0
        assert r["build_growth_bytes"] <= 4 * total / 2 + r["largest_tensor_bytes"] + 2**25 + mapped_file, r


def test_two_ranks_distill_the_mixture_as_one_process(tmp_path):
    run_launch(distill_command(MIXTURE, tmp_path / "two", MIXTURE_RUN), ROOT)
    assert_same_losses(logged_losses(tmp_path / "two"), plain_losses(MIXTURE, MIXTURE_RUN, tmp_path / "one"))


def test_two_ranks_distill_digits_as_one_process(digits_two_ranks, tmp_path):
    report = json.loads((digits_two_ranks / "report.json").read_text())
    teacher = report["teacher_parameters"]
    assert teacher["ranks"] == 2 and teacher["main_rank_holds"] == pytest.approx(teacher["total"] / 2, rel=0.01)
    assert_same_losses(logged_losses(digits_two_ranks), plain_losses(DIGITS, [*DIGITS_RUN, *IN_MEMORY],
                                                                      tmp_path / "one"))


@pytest.mark.parametrize("sequence_parallel", [1, 2])
def test_two_ranks_roll_out_the_causal_student_as_one_process(tmp_path, sequence_parallel):
    """Self-Forcing's KV-cached rollout (exit step drawn once for all ranks) on ZeRO-3 with a sharded teacher
    logs the losses of one process with the same global batch: as 2 data-parallel ranks, and as one sequence group
    of 2 ranks splitting each clip's frames (teacher, fake score and student all Ulysses-parallel)."""
    teacher = train_tiny_teacher(tmp_path / "teacher")
    config = VIDEO / "moving_digits_self_forcing.yaml"
    run = [*QUICK, f"teacher.checkpoint={teacher}", "train.steps=4", "train.batch_size=4", "train.generator_every=2",
           "train.checkpoint_every=0", "eval.n_samples=4", "eval.batch_size=4"]
    two = [*run, "engine.kind=deepspeed", "engine.zero_stage=3", "teacher.shard=true",
           f"engine.sequence_parallel={sequence_parallel}"]
    run_launch(distill_command(config, tmp_path / "two", two), ROOT)
    assert_same_losses(logged_losses(tmp_path / "two"), plain_losses(config, two, tmp_path / "one"))


def test_two_ranks_in_bf16_train_as_one_process_in_bf16(tmp_path):
    """`train.precision: bf16`: bf16 parameters and gradients, fp32 master weights and Adam moments in the
    optimizer partitions, an fp32 EMA. 2 ranks log one DeepSpeed process's losses within bfloat16's rounding of
    differently split batches and reductions (rel 3e-2, abs 2e-3; fp32 runs agree to 1e-4). Measured worst over 6
    steps: 1.4% through torch's F.linear, 2.4% through DeepSpeed's linear function, which rounds the product to bf16
    before adding the bias (`engine.memory_efficient_linear`, the default)."""
    run = [*QUICK, "train.steps=6", "train.checkpoint_every=6", "train.batch_size=16", "train.grad_accum=2",
           "train.precision=bf16", *IN_MEMORY]
    for ranks, name in ((2, "two"), (1, "one")):
        run_launch(distill_command(DIGITS, tmp_path / name, run, ranks=ranks), ROOT)
    assert_same_losses(logged_losses(tmp_path / "two"), logged_losses(tmp_path / "one"), rel=3e-2, abs_=2e-3)
    step = tmp_path / "two" / "checkpoints" / "step_00000006"
    for name, dtype in (("generator", torch.bfloat16), ("fake_score", torch.bfloat16),
                        ("generator_ema", torch.float32)):
        assert {t.dtype for t in load_file(step / f"{name}.safetensors").values()} == {dtype}, name
    partition = step / "deepspeed" / "generator" / "state" / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"
    optimizer = torch.load(partition, map_location="cpu", weights_only=False)["optimizer_state_dict"]
    assert {t.dtype for t in optimizer["fp32_flat_groups"]} == {torch.float32}
    assert {m.dtype for state in optimizer["optimizer_state_dict"]["state"].values()
            for key, m in state.items() if key != "step"} == {torch.float32}


def test_sequence_parallel_video_dit_answers_as_one_rank(tmp_path):
    """Ulysses (`engine.sequence_parallel: 2`): a float64 video DiT with each clip's frames split over 2 ranks gives
    one rank's output, features and gradients (input and parameters, each rank's part summed) bidirectional and
    block-causal, and streams with its KV cache as one rank's masked forward, to 1e-12 relative."""
    script = ROOT / "tests" / "distributed" / "sequence_parallel.py"
    run_launch(launch_command(str(script), str(tmp_path)), ROOT)
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["group_size"] == 2 and report["data_parallel_ranks"] == 1
        for case in ("bidirectional", "causal", "streaming"):
            worst = max(report[case], key=report[case].get)
            assert report[case][worst] < 1e-12, (case, worst, report[case][worst])


def test_sequence_parallel_apt_counts_its_discriminator_heads_once(tmp_path):
    """APT on video (a one-step student; the discriminator a trainable teacher copy with read-out heads) with each
    clip's frames split over 2 ranks logs one process's losses, the discriminator's gradient norm included: the
    heads see whole clips on both ranks, and their gradients are divided back by the group's size. On ZeRO-3, whose
    per-layer gathering the heads' nn.MultiheadAttention needs told about its output projection."""
    teacher = train_tiny_teacher(tmp_path / "teacher")
    config = VIDEO / "moving_digits_apt.yaml"
    run = [*QUICK, f"teacher.checkpoint={teacher}", "train.steps=4", "train.batch_size=4", "train.checkpoint_every=0",
           "eval.n_samples=4", "eval.batch_size=4", "adversary.layers=[-2,-1]"]
    two = [*run, "engine.kind=deepspeed", "engine.zero_stage=3", "teacher.shard=true", "engine.sequence_parallel=2"]
    run_launch(distill_command(config, tmp_path / "two", two), ROOT)
    losses = logged_losses(tmp_path / "two")
    assert "d_grad_norm" in losses[0]
    assert_same_losses(losses, plain_losses(config, two, tmp_path / "one"))


def test_ranks_stream_their_own_shards(digits_two_ranks_from_shards):
    rows = logged_losses(digits_two_ranks_from_shards)
    per_step = 16                             # the global batch of real digits for the critic's GAN term
    assert [row["data_samples"] for row in rows] == [per_step * row["step"] for row in rows]
    assert rows[-1]["data_skipped"] == 0


def kill_at_first_checkpoint(command: list[str], out: Path, steps: int) -> None:
    """Start a run, SIGKILL all its ranks once its first checkpoint is written, and check it was cut mid-way."""
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "latest").is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "report.json").exists(), "the run finished before it could be killed"
    stopped_at = int((out / "checkpoints" / "latest").read_text().split("_")[1])
    assert 0 < stopped_at < steps


def test_killed_run_resumes_on_the_same_loss_curve(digits_two_ranks_from_shards, shard_run, tmp_path):
    out = tmp_path / "killed"
    kill_at_first_checkpoint(distill_command(DIGITS, out, shard_run), out, 12)
    run_launch(distill_command(DIGITS, out, shard_run, resume=True), ROOT)
    assert logged_losses(out) == logged_losses(digits_two_ranks_from_shards)


def test_killed_bf16_sequence_parallel_run_resumes_exactly(tmp_path):
    """Self-Forcing in DeepSpeed bf16 with each clip's frames split over 2 ranks (and the teacher sharded): killed
    after its first checkpoint and resumed, it logs the uninterrupted run's losses exactly."""
    teacher = train_tiny_teacher(tmp_path / "teacher")
    config = VIDEO / "moving_digits_self_forcing.yaml"
    run = [*QUICK, f"teacher.checkpoint={teacher}", "train.steps=10", "train.batch_size=4", "train.generator_every=2",
           "train.checkpoint_every=1", "eval.n_samples=4", "eval.batch_size=4", "engine.kind=deepspeed",
           "engine.zero_stage=3", "teacher.shard=true", "engine.sequence_parallel=2", "train.precision=bf16"]
    run_launch(distill_command(config, tmp_path / "whole", run), ROOT)
    killed = tmp_path / "killed"
    kill_at_first_checkpoint(distill_command(config, killed, run), killed, 10)
    run_launch(distill_command(config, killed, run, resume=True), ROOT)
    assert logged_losses(killed) == logged_losses(tmp_path / "whole")


def test_deepspeed_run_samples_without_deepspeed(digits_two_ranks):
    distiller = open_run(digits_two_ranks)
    assert distiller.config.engine.kind == "plain" and distiller.step == 12
    noise, cond = distiller.fixed_inputs(8)
    with torch.no_grad():
        samples = distiller.ema.model.sample(noise, cond)
    assert samples.shape == (8, 1, 8, 8) and torch.isfinite(samples).all()


def test_two_ranks_import_a_plugin_and_train_its_components(tmp_path):
    """The example out-of-tree modality and objective (examples/radial_plugin.py) on 2 DeepSpeed ranks: each rank
    imports the plugin the config names before reading it."""
    overrides = [*QUICK, "train.steps=6", "train.checkpoint_every=0", "engine=deepspeed"]
    run_launch(distill_command(ROOT / "examples" / "radial.yaml", tmp_path / "run", overrides), ROOT)
    assert "radius_gap" in (tmp_path / "run" / "report.json").read_text()
