"""`potstill demo` end to end at 2 training steps: the report's table holds the teacher at NFE 1, 2, 4, 8 and 35
and the one-step student, scored alike, and the labelled comparison grid is written."""

from PIL import Image

from potstill.demo import TEACHER_NFE, run_demo


def test_the_demo_reports_teacher_and_student_rows_and_a_readable_grid(tmp_path):
    report = run_demo(tmp_path / "demo", steps=2)
    rows = report["table"]
    assert [(r["model"], r["nfe"]) for r in rows] == [("teacher", n) for n in TEACHER_NFE] + \
        [("student (one step)", 1)]
    assert all({"fdd", "class_recall_mean", "class_recall_min", "ms_per_sample"} <= r.keys() for r in rows)
    assert rows[-2]["fdd"] < 10 < rows[-1]["fdd"]                # the teacher at 35; a student after 2 steps
    assert Image.open(report["grid"]).size == (364, 638)        # 10 classes x 8 rows, twice, enlarged 4 times
