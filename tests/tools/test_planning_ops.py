"""tools/planning_ops.py (the host-op counter quoted in docs/boundaries) runs on a CPU and counts what it says: a
Q-boundary layer's estimation costs more ops than the same heads without boundaries, and the index build is counted
separately."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_planning_ops_counts_estimation_and_index_per_config() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "planning_ops.py"), "--configs", "none,q_same", "--tokens", "1500",
         "--heads", "4", "--by-function"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TRITON_INTERPRET": "1"}, check=True,
    ).stdout  # fmt: skip
    counts = {
        m[0]: (int(m[1]), int(m[2])) for m in re.findall(r"^(\w+): estimation (\d+) ops, index (\d+) ops", out, re.M)
    }
    assert set(counts) == {"none", "q_same"}, out
    assert 0 < counts["none"][0] < counts["q_same"][0], counts
    assert all(index > 0 for _, index in counts.values()), counts
    assert "boundary_planner.py:boundary_keeps" in out  # per-function lines name the calling mmi function
