"""The audio demo's table: one row per sampler, the real-time factor from the clip length and the time per clip."""

import pytest

from potstill.demo_audio import format_table, real_time_factor

ROW = {"nfe": 1, "pitch_accuracy": 0.97, "pitch_accuracy_min": 0.9, "purity": 0.93, "purity_min": 0.85,
       "ms_per_sample": 2.0}


def test_real_time_factor_is_audio_seconds_per_wall_second():
    assert real_time_factor(ROW, 0.128) == pytest.approx(64.0)


def test_rows_show_fad_and_partial_spread_only_where_scored():
    rows = [{"model": "teacher (ODE)", **ROW, "fad_toy": 1.5, "partial_spread": 0.25, "real_time_factor": 64.0},
            {"model": "student (1 step)", **ROW, "real_time_factor": 64.0}]
    lines = format_table(rows).splitlines()
    assert len(lines) == 4 and "FAD-toy" in lines[0]
    assert "| 0.250 | 1.500 |" in lines[2] and "| - | - |" in lines[3] and "0.970 / 0.900" in lines[3]
