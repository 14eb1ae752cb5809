"""`benchmarks/gpu_suite.sh` at toy sizes (GPU_SUITE_QUICK=1), which is how a machine without a GPU checks the
script a lent GPU will run: each of its three benchmarks writes its results."""

import os
import subprocess
import sys
import time

from tests_support import ROOT

RESULTS = ROOT / "benchmarks" / "results"


def test_the_gpu_suite_runs_at_toy_sizes():
    started = time.time()
    done = subprocess.run([str(ROOT / "benchmarks" / "gpu_suite.sh")], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "GPU_SUITE_QUICK": "1", "PY": sys.executable})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ("dit_xl", "data_throughput", "video_streaming"):
        for suffix in (".json", ".md"):
            written = RESULTS / f"gpu_suite_check_{name}{suffix}"
            assert written.stat().st_mtime >= started - 1, written
