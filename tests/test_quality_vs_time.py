"""`benchmarks/quality_vs_time.py` at toy sizes: runs each recipe as its own process with periodic evaluations,
two at a time, gives the leaders their extra seeds, and writes the table, the curves and the plot."""

import json
import subprocess
import sys

from tests_support import ROOT


def test_the_benchmark_runs_at_toy_sizes(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality_vs_time.py"), "--recipes",
                           "sid=digits_sid.yaml", "sim=digits_sim.yaml", "--steps", "4", "--every", "2",
                           "--n-eval", "60", "--jobs", "2", "--leaders", "1", "--leader-seeds", "0", "1",
                           "--results", str(tmp_path), "--name", "toy"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp_path / "toy.json").read_text())
    assert [t["nfe"] for t in record["teacher"]] == [1, 2, 4, 8, 17, 35, 63]
    seeds = {s["recipe"]: s["seeds"] for s in record["summaries"]}
    assert sorted(seeds.values()) == [[0], [0, 1]]                 # the leader ran a second seed
    for runs in record["curves"].values():
        for curve in runs.values():
            assert [r["step"] for r in curve] == [2, 4] and curve[-1]["train_seconds"] > curve[0]["train_seconds"]
    table = (tmp_path / "toy.md").read_text()
    assert "| sid |" in table and "| sim |" in table and "teacher NFE 35" in table and "2 runs at a time" in table
    assert (tmp_path / "toy.png").stat().st_size > 10_000
