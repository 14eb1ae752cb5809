"""ODE pairs: the teacher's states at exactly the student's step times and its endpoint equal a hand-run Euler
solve; a pairs file is reused unchanged, and one from another teacher or for other step times is refused."""

import pytest
import torch

from potstill.core.distiller import Distiller
from potstill.core.ode_pairs import PairSettings, load_or_make, make_pairs, pair_grid
from tests_support import RING, make_config


def ring_run(teacher=RING) -> Distiller:
    return Distiller(make_config({"teacher": teacher, "generator": {"kind": "mlp"}, "fake_score": {"kind": "mlp"}}))


def hand_euler(denoiser, noise, grid, keep):
    """dx/dt = (x - D(x, t)) / t, which is the probability-flow ODE of EDM (sigma = t) and of rectified flow."""
    x, kept = grid[0] * noise, {}
    for t, t_next in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        if t in keep:
            kept[t] = x.clone()
        d = denoiser.x0(x, torch.tensor(t), None)
        x = d if t_next == 0 else x + (t_next - t) * (x - d) / t
    return x, [kept[t] for t in keep]


def test_states_at_the_student_times_equal_a_hand_run_euler_solve():
    run = ring_run()
    settings = PairSettings(count=40, times=[80.0, 6.5, 1.25], nfe=10, solver="euler", guidance=1.0, seed=3)
    pairs = make_pairs(run.teacher, run.modality, settings, torch.device("cpu"), batch=16)
    grid, kept = pair_grid(run.teacher, settings)
    assert {6.5, 1.25} <= set(grid.tolist()) and grid[-1] == 0 and len(grid) == 10 + 1 + 2
    endpoint, states = hand_euler(run.teacher, pairs["noise"], grid, kept)
    torch.testing.assert_close(pairs["endpoint"], endpoint)
    torch.testing.assert_close(pairs["states"], torch.stack(states, dim=1))
    torch.testing.assert_close(pairs["states"][:, 0], 80.0 * pairs["noise"])


def test_a_pairs_file_is_reused_and_refused_for_another_teacher_or_other_times(tmp_path):
    run = ring_run()
    settings = PairSettings(count=16, times=[80.0, 2.0], nfe=6, solver="euler", guidance=1.0, seed=0)
    path = tmp_path / "pairs.safetensors"
    first = load_or_make(run.teacher, run.modality, settings, torch.device("cpu"), str(path), None)
    stamp = path.stat().st_mtime_ns
    again = load_or_make(run.teacher, run.modality, settings, torch.device("cpu"), str(path), None)
    assert path.stat().st_mtime_ns == stamp
    torch.testing.assert_close(again["states"], first["states"])
    other_times = PairSettings(**{**vars(settings), "times": [80.0, 1.0]})
    with pytest.raises(ValueError, match=r"objective.pairs_file: .* times \[80.0, 2.0\]"):
        load_or_make(run.teacher, run.modality, other_times, torch.device("cpu"), str(path), None)
    moved = ring_run({**RING, "means": [[m[0] + 0.5, m[1]] for m in RING["means"]]})
    with pytest.raises(ValueError, match="another teacher"):
        load_or_make(moved.teacher, run.modality, settings, torch.device("cpu"), str(path), None)


def test_pairs_dir_names_files_by_teacher_and_settings(tmp_path):
    run = ring_run()
    settings = PairSettings(count=8, times=[80.0], nfe=4, solver="euler", guidance=1.0, seed=0)
    load_or_make(run.teacher, run.modality, settings, torch.device("cpu"), None, str(tmp_path))
    load_or_make(run.teacher, run.modality, PairSettings(**{**vars(settings), "times": [80.0, 3.0]}),
                 torch.device("cpu"), None, str(tmp_path))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and all(n.startswith("ode_pairs-") for n in names)
    assert names[0].split("-")[1] == names[1].split("-")[1]      # same teacher hash, other settings
