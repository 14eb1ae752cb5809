"""The video demo's table: one row per model and clip length, `class kept` and the last range's class recall only
where clips span two ranges."""

from potstill.demo_video import format_table, row

SHORT = {"nfe": 24, "shift_residual_1_12": 0.3, "velocity_in_set": 0.8, "class_recall_mean": 0.3,
         "class_recall_min": 0.1, "fvd_toy": 200.0, "ms_per_sample": 80.0}
LONG = {**SHORT, "nfe": 5, "shift_residual_13_24": 0.25, "shift_residual_37_48": 0.4, "class_kept": 0.9,
        "class_recall_last": 0.7}


def test_rows_name_the_first_and_last_range_and_long_clip_class_scores_only_for_long_clips():
    rows = [row("teacher", 8, SHORT), row("student", 48, LONG)]
    assert rows[1]["residual_first"] == 0.3 and rows[1]["residual_last"] == 0.4 and rows[1]["last_range"] == "37-48"
    lines = format_table(rows).splitlines()
    assert len(lines) == 4 and "class kept" in lines[0]
    assert "| - | - |" in lines[2] and "0.4000 (37-48)" in lines[3] and "| 0.700 | 0.900 |" in lines[3]
